// Kernel tests for kernels/layernorm.cu: written with the kernel.
