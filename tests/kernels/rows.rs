// Kernel tests for kernels/rows.cu: written with the kernel.
