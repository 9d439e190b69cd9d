"""Single-writer locks on output folders (stylecraft.locks)."""

import subprocess
import sys

import pytest

from stylecraft.errors import StylecraftError
from stylecraft.locks import folder_lock


def test_a_second_process_is_refused_at_once_and_told_who_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    script = f"from stylecraft.locks import folder_lock\nwith folder_lock({str(out)!r}, 'sampling'): pass"
    with folder_lock(out, "training"):
        refused = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "in use by another stylecraft process (training) with pid" in refused.stderr
        with pytest.raises(StylecraftError, match=r"\(training\) with pid \d+"):  # another holder in this process
            with folder_lock(out, "sampling"):
                pass
    # released: the lock file left behind blocks nothing
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
    with folder_lock(out, "sampling"):
        pass
