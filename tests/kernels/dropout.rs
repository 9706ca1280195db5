// Kernel tests for kernels/dropout.cu: written with the kernel.
