"""What the load scripts read about the relay process from /proc (Linux)."""


def rss_kib(pid):
    """VmRSS of pid in KiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
