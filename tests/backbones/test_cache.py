import numpy as np
import pytest

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


def test_cache_keys_are_those_warm_caches_were_written_under(monkeypatch, tmp_path):
    """Every key recipe gives what the code before `CacheKey` gave (values computed by that code), so a
    refactoring never turns a warm cache cold without saying so here."""
    import dataclasses

    from flowerid.backbones import get_spec
    from flowerid.backbones.cache import CacheKey
    from flowerid.data.augment import Augment

    from ..conftest import TINY

    monkeypatch.setenv("FLOWERID_CACHE", str(tmp_path))
    digest = "ab" * 32
    expected = {  # features, view 2 of Augment(), ONNX graph, activations before 1 and 2 stages
        "efficientnet_lite0": ("3e6341721e542fe284a723b2", "7905e80b546d1511e194b3f9", "9b9e2f6c61b528111c406714",
                               "38c7ec0a9ad1902f2fb4c2f7", "e80fbf4c3e373bd5295051dd"),
        "efficientnet_lite012": ("6cdacec18d13d28c63a01257", "7883991a6db5a40a09ea15d5", "433799ff881951f6c0bbae82",
                                 "82242022392ce62707056050", "3932c4794953c36051f0b417"),
        TINY: ("96f8d79d86469587a308255c", "fb33cdd127b519a799c35de4", "c0d7db19d36469cb79237826",
               "c9cb59e11497b7b2cb5282c1", "3a330c45852a331d24c34367"),
    }  # fmt: skip
    for name, (feats, view, graph, front1, front2) in expected.items():
        spec = get_spec(name)
        key = CacheKey.of(spec, digest)
        assert (key.kind, key.dtype) == ("features", "float32")
        assert (key.namespace(), key.namespace(Augment(), 2)) == (feats, view)
        assert key.graph_path() == tmp_path / "onnx" / f"{name}-{graph}.onnx"
        one = CacheKey.of(spec, digest, 1)
        assert (one.kind, one.dtype, one.namespace()) == ("activations", "float16", front1)
        assert one.graph_path() == tmp_path / "onnx" / f"{name}-front-{front1}.onnx"
        assert CacheKey.of(spec, digest, 2).namespace() == front2
    # An ensemble member fed its view of the ensemble's crop: keyed by the ensemble's name and preprocessing.
    ens = get_spec("efficientnet_lite012")
    member = CacheKey(f"{ens.name}.efficientnet_lite0", "cd" * 32, ens.preprocessing, ens.input_size, 1)
    assert member.namespace() == "4f73dfa41d0b647a0ce8cede"
    assert dataclasses.replace(member, stages=0).namespace() != member.namespace()


def test_a_cache_place_that_names_no_home_is_a_clear_error(monkeypatch):
    from flowerid.backbones.cache import cache_root
    from flowerid.errors import OutputError

    monkeypatch.setenv("FLOWERID_CACHE", "~no_such_user_here_xyz/cache")
    with pytest.raises(OutputError, match="set FLOWERID_CACHE"):
        cache_root()
