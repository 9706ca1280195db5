// Switching between fibers: save the callee-saved registers and the stack pointer of the running
// context, load another's. On x86-64 this is a dozen instructions (the emulator switches several
// hundred thousand times per second of test time, so swapcontext's signal-mask system call per
// switch would dominate); elsewhere it falls back to ucontext.
#pragma once

#include <cstddef>
#include <cstdint>

namespace emu {

struct Context {
#if defined(__x86_64__)
    void* stack_pointer = nullptr;
#else
    alignas(16) unsigned char storage[1024];  // a ucontext_t, kept opaque here
#endif
};

// Prepares `context` to run `entry(argument)` on the stack [stack_low, stack_low + size) the first
// time it is switched to. `entry` must never return: it switches away for the last time instead.
void context_init(Context& context, void* stack_low, size_t size, void (*entry)(void*), void* argument);

// Saves the running context into `from` and continues `to`.
void context_switch(Context& from, Context& to);

}  // namespace emu
