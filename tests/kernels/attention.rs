// Kernel tests for kernels/attention.cu: written with the kernel.
