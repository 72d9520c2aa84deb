"""Peer samplers (k-diffusion, diffusers) driven on a diffscale denoiser, for ``benchmarks/samplers_vs_peers.py``.

Benchmark-only: the peers are optional (``pip install -e .[bench]``); a peer that cannot be imported is listed
with the reason instead of failing the benchmark. Every peer sees the same denoiser D(x_hat; sigma) (unscaled
x_hat = y + sigma n, EDM paper Eq. 2), the same starting noise x_hat_0 = sigma_max n and, unless stated, the same
Karras grid sigma_i (EDM paper Eq. 5, rho = 7, sigma in [0.002, 80]) followed by sigma_N = 0.
"""

from benchmarks.peers.common import CountingDenoiser, PeerSampler, Unavailable, karras_sigmas

__all__ = ["CountingDenoiser", "PeerSampler", "Unavailable", "karras_sigmas"]
