// Kernel tests for kernels/cross_entropy.cu: written with the kernel.
