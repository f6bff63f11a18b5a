"""Stand-in cell tasks for the sweep tests that kill or interrupt a sweep (importable by the
spawned pool workers, which unpickle them by module name)."""

import os
import time
from pathlib import Path

from basisprune.repro import sweep
from basisprune.repro.results import write_json


class Sleeper:
    """Records its worker's pid in ``<folder>/pids/<seed>``; seed 0 (and every cell once
    ``<folder>/fast`` exists) finishes at once, the others sleep a minute."""

    def __init__(self, threads=None, keep_checkpoints=True):
        self.threads = threads

    def __call__(self, cell, folder):
        pids = Path(folder) / "pids"
        pids.mkdir(exist_ok=True)
        (pids / str(cell.seed)).write_text(str(os.getpid()))
        if cell.seed != 0 and not (Path(folder) / "fast").exists():
            time.sleep(60)
        write_json(sweep.cell_dir(folder, cell) / "results.json", {"seed": cell.seed})
        return {"fingerprint": cell.fingerprint, "status": "done", "error": None, "seconds": 0.0}


def env_probe(cell, folder):
    """Writes the worker's TQDM_DISABLE into the cell's results file."""
    write_json(sweep.cell_dir(folder, cell) / "results.json", {"TQDM_DISABLE": os.environ.get("TQDM_DISABLE")})
    return {"fingerprint": cell.fingerprint, "status": "done", "error": None, "seconds": 0.0}
