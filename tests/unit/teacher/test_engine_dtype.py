"""The vLLM engine's dtype: ``auto`` means float32 on a CPU that would only emulate bf16 (measured 4x slower
there), and whatever vLLM picks where bf16 is native or on a GPU; an explicit setting is never changed."""

from __future__ import annotations

import pytest

from services.teacher.vllm_backend import engine_dtype

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


def test_this_machines_flags_are_read():
    # Whatever this machine is, the answer for 'auto' on its CPU is one of the two.
    assert engine_dtype("auto", on_cpu=True) in {"auto", "float32"}
