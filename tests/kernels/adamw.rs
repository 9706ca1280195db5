// Kernel tests for kernels/adamw.cu: written with the kernel.
