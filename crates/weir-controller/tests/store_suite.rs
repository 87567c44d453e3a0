//! openraft's storage conformance suite against the sled-backed log and state machine.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use weir_controller::raft::{NodeId, TypeConfig};
use weir_controller::store::{self, LogStore, StateMachine};

struct SledBuilder;

fn io(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    openraft::StorageIOError::write(&e).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(io)?;
        let db = store::open_db(dir.path()).await.map_err(io)?;
        let log = LogStore::open(&db).map_err(io)?;
        let sm = StateMachine::open(&db)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}
