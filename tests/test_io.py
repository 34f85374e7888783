import errno
import os
import stat

import pytest

from flowerid._io import atomic_write, atomic_write_bytes, atomic_write_json
from flowerid.errors import OutputError


def test_atomic_writes_get_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    for path in (atomic_write_bytes(tmp_path / "a.bin", b"x"), atomic_write_json(tmp_path / "b.json", {"k": 1})):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_a_place_that_cannot_be_written_is_one_typed_line_and_leaves_nothing(tmp_path):
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"a-file is a file, not a folder; choose a folder") as exc:
        atomic_write_bytes(tmp_path / "a-file" / "sub" / "out.bin", b"data")
    assert "\n" not in str(exc.value)

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device; free some space"):
        atomic_write(tmp_path / "out.bin", full)
    with pytest.raises(ValueError, match="not about the place"):  # other failures stay what they are

        def bad(f):
            raise ValueError("not about the place")

        atomic_write(tmp_path / "out.bin", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no temp file left behind


def test_names_print_without_direction_overrides():
    """A name with U+202E would print reversed ('Trojan Source'); it prints escaped, other scripts as they are."""
    from flowerid._text import shown

    assert shown("rose\u202egpj.exe") == "rose\\u202egpj.exe"
    assert shown("שושנה") == "שושנה" and shown("a\x1b[2Jb") == "a\\x1b[2Jb"
