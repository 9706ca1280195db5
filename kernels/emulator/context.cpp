#include "context.h"

#if defined(__x86_64__)

// System V x86-64: rbx, rbp, r12-r15, the SSE control word (MXCSR) and the x87 control word are
// preserved across calls; everything else the compiler already saved at the call site.
extern "C" void emu_context_switch_asm(void** save_stack_pointer, void* load_stack_pointer);
extern "C" void emu_context_start_asm();

asm(R"(
    .text
    .p2align 4
    .globl emu_context_switch_asm
    .hidden emu_context_switch_asm
    .type emu_context_switch_asm, @function
emu_context_switch_asm:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_context_switch_asm, .-emu_context_switch_asm

    .p2align 4
    .globl emu_context_start_asm
    .hidden emu_context_start_asm
    .type emu_context_start_asm, @function
emu_context_start_asm:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_context_start_asm, .-emu_context_start_asm
)");

namespace emu {

void context_init(Context& context, void* stack_low, size_t size, void (*entry)(void*), void* argument) {
    // The frame emu_context_switch_asm pops, from the top of the stack down: the return address
    // (the start trampoline, placed so that the stack is 16-byte aligned at its `call`), rbp, rbx,
    // r12 (the argument), r13 (the entry), r14, r15, then MXCSR and the x87 control word.
    auto top = reinterpret_cast<uintptr_t>(stack_low) + size;
    top &= ~static_cast<uintptr_t>(15);
    auto* slot = reinterpret_cast<uint64_t*>(top);
    slot[-1] = reinterpret_cast<uint64_t>(&emu_context_start_asm);
    slot[-2] = 0;                                         // rbp
    slot[-3] = 0;                                         // rbx
    slot[-4] = reinterpret_cast<uint64_t>(argument);      // r12
    slot[-5] = reinterpret_cast<uint64_t>(entry);         // r13
    slot[-6] = 0;                                         // r14
    slot[-7] = 0;                                         // r15
    uint32_t mxcsr;
    uint16_t x87_control;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87_control));
    auto* control = reinterpret_cast<uint32_t*>(&slot[-8]);
    control[0] = mxcsr;
    control[1] = x87_control;
    context.stack_pointer = &slot[-8];
}

void context_switch(Context& from, Context& to) { emu_context_switch_asm(&from.stack_pointer, to.stack_pointer); }

}  // namespace emu

#else

#include <ucontext.h>

namespace emu {

static_assert(sizeof(ucontext_t) <= sizeof(Context::storage), "ucontext_t does not fit Context");

namespace {
// makecontext passes int arguments only: split the pointers into halves.
void ucontext_trampoline(unsigned entry_hi, unsigned entry_lo, unsigned arg_hi, unsigned arg_lo) {
    auto entry = reinterpret_cast<void (*)(void*)>((static_cast<uintptr_t>(entry_hi) << 32) | entry_lo);
    auto argument = reinterpret_cast<void*>((static_cast<uintptr_t>(arg_hi) << 32) | arg_lo);
    entry(argument);
    __builtin_trap();
}
}  // namespace

void context_init(Context& context, void* stack_low, size_t size, void (*entry)(void*), void* argument) {
    auto* uc = reinterpret_cast<ucontext_t*>(context.storage);
    getcontext(uc);
    uc->uc_stack.ss_sp = stack_low;
    uc->uc_stack.ss_size = size;
    uc->uc_link = nullptr;
    auto e = reinterpret_cast<uintptr_t>(entry);
    auto a = reinterpret_cast<uintptr_t>(argument);
    makecontext(uc, reinterpret_cast<void (*)()>(&ucontext_trampoline), 4, static_cast<unsigned>(e >> 32),
                static_cast<unsigned>(e), static_cast<unsigned>(a >> 32), static_cast<unsigned>(a));
}

void context_switch(Context& from, Context& to) {
    swapcontext(reinterpret_cast<ucontext_t*>(from.storage), reinterpret_cast<ucontext_t*>(to.storage));
}

}  // namespace emu

#endif
