"""Hand-written kernels for the export/deployment path (Triton); each module owns one kernel."""
