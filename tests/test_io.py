import os
import stat

from flowerid._io import atomic_write_bytes, atomic_write_json


def test_atomic_writes_get_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    for path in (atomic_write_bytes(tmp_path / "a.bin", b"x"), atomic_write_json(tmp_path / "b.json", {"k": 1})):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
