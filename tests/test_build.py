import gdfast


def test_build_info_describes_the_build():
    info = gdfast.build_info()
    assert info["version"] == gdfast.__version__
    assert info["simd"] in info["simd_available"]
    assert "scalar" in info["simd_available"]
    assert info["threads"] >= 1
    assert isinstance(info["openmp"], bool)


def test_set_num_threads_round_trips_and_rejects_zero():
    before = gdfast.get_num_threads()
    try:
        gdfast.set_num_threads(1)
        assert gdfast.get_num_threads() == 1
    finally:
        gdfast.set_num_threads(before)
    import pytest
    with pytest.raises(ValueError, match="n must be a positive"):
        gdfast.set_num_threads(0)


def test_every_available_simd_path_can_be_selected():
    before = gdfast.build_info()["simd"]
    try:
        for name in gdfast.build_info()["simd_available"]:
            gdfast.set_simd(name)
            assert gdfast.build_info()["simd"] == name
    finally:
        gdfast.set_simd(before)


def test_unknown_simd_path_is_refused():
    import pytest
    with pytest.raises(ValueError, match="unknown SIMD path"):
        gdfast.set_simd("sse9")
