//! Google resource names and the Weir names they map to: project `p`'s topic `t` is the Weir
//! topic `p.t`, its subscription `s` the Weir subscription `p.s`, its snapshot `n` the snapshot
//! `p.n`. A project id holds no '.', so the first '.' splits a Weir name back.

use tonic::Status;

/// Which kind of resource a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Topics,
    Subscriptions,
    Snapshots,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Topics => "topics",
            Kind::Subscriptions => "subscriptions",
            Kind::Snapshots => "snapshots",
        }
    }
}

/// A parsed `projects/{project}/{kind}/{id}` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub project: String,
    pub id: String,
    pub kind: Kind,
}

fn invalid(field: &str, name: &str, why: &str) -> Status {
    Status::invalid_argument(format!("Invalid [{field}] name: ({name}) {why}"))
}

/// A project id: letters, digits and hyphens.
pub fn project(field: &str, raw: &str) -> Result<String, Status> {
    let p = raw.strip_prefix("projects/").unwrap_or(raw);
    if p.is_empty()
        || p.len() > 63
        || !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(field, raw, "is not a valid project"));
    }
    Ok(p.to_string())
}

impl Name {
    /// Parses and checks Google's rules: 3 to 255 characters, starting with a letter, of
    /// letters, digits, '-', '_', '.' ('~', '+' and '%' are Google's too, but not allowed
    /// in Weir names), not starting with "goog".
    pub fn parse(field: &str, raw: &str, kind: Kind) -> Result<Name, Status> {
        let parts: Vec<&str> = raw.splitn(4, '/').collect();
        if parts.len() != 4 || parts[0] != "projects" || parts[2] != kind.collection() {
            return Err(invalid(
                field,
                raw,
                &format!("must be projects/{{project}}/{}/{{id}}", kind.collection()),
            ));
        }
        let project = project(field, parts[1])?;
        let id = parts[3];
        if id.len() < 3 || id.len() > 255 {
            return Err(invalid(field, raw, "must be 3 to 255 characters"));
        }
        if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(invalid(field, raw, "must start with a letter"));
        }
        if id.starts_with("goog") {
            return Err(invalid(field, raw, "must not start with \"goog\""));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(invalid(
                field,
                raw,
                &format!("character {c:?} is not allowed"),
            ));
        }
        if project.len() + 1 + id.len() > 249 {
            return Err(invalid(
                field,
                raw,
                "project and id together exceed 248 bytes",
            ));
        }
        Ok(Name {
            project,
            id: id.to_string(),
            kind,
        })
    }

    /// The Weir name.
    pub fn weir(&self) -> String {
        format!("{}.{}", self.project, self.id)
    }

    /// The Google name of Weir name `weir`, when it belongs to a project.
    pub fn from_weir(weir: &str, kind: Kind) -> Option<Name> {
        let (project, id) = weir.split_once('.')?;
        Some(Name {
            project: project.to_string(),
            id: id.to_string(),
            kind,
        })
    }

    pub fn google(&self) -> String {
        format!(
            "projects/{}/{}/{}",
            self.project,
            self.kind.collection(),
            self.id
        )
    }
}

/// The Google name for a Weir name (or the Weir name as it is, for one outside any project).
pub fn google(weir: &str, kind: Kind) -> String {
    Name::from_weir(weir, kind).map_or_else(|| weir.to_string(), |n| n.google())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_name_the_field() {
        let n =
            Name::parse("topic", "projects/my-proj/topics/orders.v1", Kind::Topics).expect("valid");
        assert_eq!(n.weir(), "my-proj.orders.v1");
        assert_eq!(
            google(&n.weir(), Kind::Topics),
            "projects/my-proj/topics/orders.v1"
        );
        for bad in [
            "projects/p/topics/ab",
            "projects/p/topics/1abc",
            "projects/p/topics/googabc",
            "projects/p/subscriptions/abc",
            "projects/p/topics/a b c",
            "projects/p.q/topics/abc",
            "topics/abc",
        ] {
            let e = Name::parse("topic", bad, Kind::Topics).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("[topic]"), "{bad}: {}", e.message());
        }
    }
}
