// Kernel tests for kernels/embedding.cu: written with the kernel.
