"""Our C++ kernels: paged decode attention, the fused elementwise ops of a decoder layer,
and GEMMs from GGUF blocks (sources in csrc/), built by `cpu.py` and called as
torch.ops.tandem.* by the attention backend, the model's ops and its linear layers."""
