"""Touches the machine's free memory once per boot, so the page cache the benchmark fills is
made of pages the hypervisor already backs.

On a virtual machine, the first write to a guest page faults into the host, which allocates
and zeroes it: ~4.6 us per 4 KiB page here, ~210 MB/s. A freshly booted VM pays that for
every new page-cache page, i.e. for every byte a log writes until the page cache has cycled
through RAM once. Where the kernel reports free pages to the host (free page reporting,
/sys/module/page_reporting), pages that stay free for minutes go cold again, so the warm-up
helps the runs that follow it, not a whole day (benches/README.md, "A smaller cached tail"). Measured here,
it was 15 % of all CPU at 25 MB/s RF 3 (`copy_folio_from_iter_atomic` under `pwrite`) and it
is gone after this runs. Both systems in the comparison run after it.

Prints what it did; skips when this boot was already warmed (a marker in /dev/shm).
"""

import mmap
import os
import sys
import time

MARKER = "/dev/shm/weir-bench-memory-warmed"
PAGE = 4096
MARGIN = 512 << 20
# far more than a run writes; a big machine is not worth minutes of warming
LIMIT = 32 << 30


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def mem_free() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemFree in /proc/meminfo")


def main() -> int:
    boot = boot_id()
    try:
        with open(MARKER) as f:
            if f.read().strip() == boot:
                print("memory: already warmed since boot")
                return 0
    except FileNotFoundError:
        pass
    size = min(mem_free() - MARGIN, LIMIT) // PAGE * PAGE
    if size <= 0:
        print("memory: nothing free to warm")
        return 0
    started = time.monotonic()
    # all held at once: a page given back early would be handed out again, touched twice
    held = []
    done = 0
    while done < size:
        n = min(1 << 30, size - done)
        m = mmap.mmap(-1, n)
        for i in range(0, n, PAGE):
            m[i] = 1
        held.append(m)
        done += n
    for m in held:
        m.close()
    took = time.monotonic() - started
    try:
        with open(MARKER, "w") as f:
            f.write(boot)
    except OSError as err:
        print(f"memory: no marker ({err}); the next run warms again")
    print(f"memory: touched {done / 2**30:.1f} GiB of free memory once in {took:.0f} s "
          f"({done / took / 1e6:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
