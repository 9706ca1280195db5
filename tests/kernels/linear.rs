// Kernel tests for kernels/linear.cu: written with the kernel.
