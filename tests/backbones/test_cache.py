import numpy as np

from flowerid.backbones.cache import FeatureCache, decode_entry, encode_entry


def test_round_trip_and_damage_detected(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    cache = FeatureCache("ns", tmp_path / "c")
    assert cache.get(photo) is None
    vec = np.arange(5, dtype=np.float32)
    cache.put(photo, vec)
    np.testing.assert_array_equal(cache.get(photo), vec)
    entry = next((tmp_path / "c").rglob("*.f32"))
    blob = bytearray(entry.read_bytes())
    blob[-1] ^= 0xFF
    entry.write_bytes(bytes(blob))
    assert cache.get(photo) is None
    entry.write_bytes(bytes(blob[:7]))
    assert cache.get(photo) is None


def test_changed_file_misses(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    cache = FeatureCache("ns", tmp_path / "c")
    cache.put(photo, np.ones(3, dtype=np.float32))
    photo.write_bytes(b"xy")
    assert cache.get(photo) is None


def test_decode_rejects_wrong_magic():
    blob = bytearray(encode_entry(np.ones(2, dtype=np.float32)))
    blob[0] ^= 1
    assert decode_entry(bytes(blob)) is None


def test_float16_entries_for_activations(tmp_path):
    """Activations are cached in half precision, apart from features; a float32 entry never passes for one."""
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    half = FeatureCache("ns", tmp_path / "c", dtype="float16")
    acts = np.linspace(-3, 3, 7).astype(np.float16)
    half.put(photo, acts)
    got = half.get(photo)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, acts)
    assert next((tmp_path / "c").rglob("*.f16")).parent.parent.parent.name == "activations"
    assert FeatureCache("ns", tmp_path / "c").get(photo) is None  # features live elsewhere
    assert decode_entry(encode_entry(np.ones(2, dtype=np.float32)), "float16") is None
    assert decode_entry(encode_entry(acts, "float16"), "float32") is None
