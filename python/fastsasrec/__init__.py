"""fastsasrec: fast SASRec next-item recommendation.

A C++ engine with explicit forward and backward passes (CPU: OpenMP + BLAS) behind a
small Python API::

    from fastsasrec import SASRec
    model = SASRec(factors=64, n_layers=2, max_seq=50).fit(sequences)
    ids, scores = model.recommend([50, 100, 258], n=6)
"""
from fastsasrec._loader import load_core as _load_core

_core = _load_core()

from fastsasrec._device import cuda_status as _cuda_status  # noqa: E402
from fastsasrec.data import Sequences  # noqa: E402
from fastsasrec.estimator import SASRec  # noqa: E402
from fastsasrec._fitted import NotFittedError, Recommendations  # noqa: E402
from fastsasrec._features import ItemFeatures  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SASRec", "Sequences", "ItemFeatures", "NotFittedError", "Recommendations", "cuda_available", "show_config", "__version__"]


def cuda_available() -> bool:
    """True when the CUDA backend is compiled in and a GPU is usable now."""
    return _cuda_status()[0]


def show_config() -> None:
    """Prints the version, BLAS, OpenMP threads and CUDA status."""
    info = _core.build_info()
    ok, why = _cuda_status()
    print(f"fastsasrec {__version__}")
    print(f"  compiler: {info['compiler']}")
    print(f"  BLAS: {info['blas']}")
    print("  bf16 products (CPU): " + ("AVX-512 BF16 kernel" if info["bf16_gemm"] == "avx512bf16"
                                      else "bf16 operands through sgemm (no AVX-512 BF16 here)"))
    print("  fp32 products (CPU): " + {
        "avx512": "AVX-512 register-blocked kernels",
        "avx2": "AVX2 register-blocked kernels (the same bits as AVX-512's)",
    }.get(info["fp32_kernels"], "sgemm (no AVX-512 or AVX2 in this build, or FASTSASREC_NO_AVX512)"))
    omp = info["openmp"]
    print(f"  OpenMP: {'yes (' + str(omp) + ')' if omp else 'no'}; threads: {info['omp_max_threads']}")
    if omp:
        from fastsasrec import _loader

        print(f"  OpenMP waiting: {_loader.openmp_wait}")
    print(f"  CUDA backend: {info['cuda']}")
    count = _core.cuda_device_count() if ok else 0
    devices = f"yes: {count} GPU{'s' if count != 1 else ''}, device='cuda:0'" + \
        (f" .. 'cuda:{count - 1}'" if count > 1 else "")
    print(f"  GPU usable now: {devices if ok else 'no (' + why + ')'}")
    if _core.test_ops:
        print("  test build: _core.Ops binds the raw ops (unchecked sizes; tests only)")
