"""The vLLM engine's dtype: ``auto`` means float32 on a CPU that would only emulate bf16 (measured 4x slower
there), and whatever vLLM picks where bf16 is native or on a GPU; an explicit setting is never changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.teacher.vllm_backend import cpu_feature_flags, engine_dtype

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    ("setting", "on_cpu", "flags", "expected"),
    [
        ("auto", True, AVX2, "float32"),
        ("auto", True, set(), "float32"),
        ("auto", True, AVX2 | {"avx512f", "avx512_bf16"}, "auto"),
        ("auto", True, AVX2 | {"amx_bf16", "amx_tile"}, "auto"),
        ("auto", False, AVX2, "auto"),
        ("bfloat16", True, AVX2, "bfloat16"),
        ("float16", False, set(), "float16"),
        ("float32", True, AVX2 | {"amx_bf16"}, "float32"),
    ],
)
def test_auto_is_float32_only_on_a_cpu_without_native_bf16(setting, on_cpu, flags, expected):
    assert engine_dtype(setting, on_cpu=on_cpu, cpu_flags=flags) == expected


def test_x86_and_arm_cpuinfo_are_read(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n")
    assert cpu_feature_flags(x86) == {"fpu", "avx2", "amx_bf16"}
    assert engine_dtype("auto", on_cpu=True, cpu_flags=cpu_feature_flags(x86)) == "auto"
    assert engine_dtype("auto", on_cpu=True, cpu_flags=cpu_feature_flags(arm)) == "auto"
    assert cpu_feature_flags(tmp_path / "missing") == set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux cpuinfo only")
def test_this_machines_flags_are_read():
    assert "fpu" in cpu_feature_flags() or "fp" in cpu_feature_flags()
