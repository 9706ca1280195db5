// The emulator's scheduler: runs a kernel launch block by block, each thread of a block as a fiber,
// and turns the ways a kernel can go wrong (a barrier not all threads reach, a warp primitive with a
// lane missing, shared memory outside its declaration, a fiber stack overflow) into an error message
// returned to the launcher instead of a hang or a crash. README.md beside this file has the design.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "context.h"
#include "emulator.h"
#include "launch.h"

namespace emu {

thread_local uint3 current_thread_idx;
thread_local uint3 current_block_idx;
thread_local dim3 current_block_dim;
thread_local dim3 current_grid_dim;

namespace {

constexpr size_t kPage = 4096;
// Each fiber's stack. Kernels keep their "registers" here; 128 KiB is far more than any of ours needs
// (a guard page below it turns an overflow into a reported error).
constexpr size_t kStackBytes = 128 * 1024;
// Shared memory per block, as on sm_90 with the opt-in carve-out; static declarations alone are
// limited to 48 KiB as on every GPU.
constexpr size_t kMaxSharedBytes = 227 * 1024;
constexpr size_t kMaxStaticSharedBytes = 48 * 1024;
// Reserved address space for one block's shared memory: every allocation gets its own pages and a
// guard page after them.
constexpr size_t kArenaBytes = 16 * 1024 * 1024;
constexpr unsigned char kPoison = 0xff;  // 0xffffffff is a NaN as f32, 0xffff as bf16 and f16

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buffer[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(buffer, sizeof(buffer), fmt, args);
    va_end(args);
    return buffer;
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Shfl: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
        case WarpOp::SyncWarp: return "__syncwarp";
        case WarpOp::Mma: return "mma.sync.m16n8k16";
        case WarpOp::LdMatrix: return "ldmatrix";
    }
    return "?";
}

enum class State { Runnable, AtBarrier, AtWarp, Exited };

struct Fiber {
    Context context;
    void* stack_low = nullptr;  // lowest usable byte; the guard page lies just below
    uint3 thread{};
    unsigned linear = 0;
    State state = State::Runnable;
    WarpRequest* request = nullptr;
    struct Block* block = nullptr;
};

struct SharedAllocation {
    const char* name;
    unsigned char* pointer;
    size_t bytes;
};

struct Block {
    const LaunchParams* launch;
    uint3 index;
    unsigned linear_index;
    unsigned threads;
    std::vector<Fiber>* fibers;
    Context scheduler;
    Fiber* running = nullptr;
    std::vector<SharedAllocation> shared;
    size_t static_shared_bytes = 0;
    size_t total_shared_bytes = 0;
    void* dynamic = nullptr;
    bool failed = false;
    std::string error;
};

// What one OS thread keeps between launches: fiber stacks and the shared-memory arena are mapped
// once and reused.
struct Worker {
    std::vector<unsigned char*> stacks;  // each: guard page + kStackBytes
    std::vector<Fiber> fibers;
    unsigned char* arena = nullptr;
    size_t arena_used = 0;  // bytes from `arena` that may be readable now
    size_t arena_cursor = 0;
    Block* block = nullptr;
    void* alternate_signal_stack = nullptr;

    ~Worker() {
        for (auto* stack : stacks) munmap(stack, kPage + kStackBytes);
        if (arena) munmap(arena, kArenaBytes);
        if (alternate_signal_stack) {
            stack_t disable{};
            disable.ss_flags = SS_DISABLE;
            sigaltstack(&disable, nullptr);
            free(alternate_signal_stack);
        }
    }
};

thread_local Worker* current_worker = nullptr;
thread_local Fiber* current_fiber = nullptr;
std::atomic<uint64_t> next_generation{1};
thread_local uint64_t block_generation = 0;

Worker& worker() {
    static thread_local Worker instance;
    current_worker = &instance;
    return instance;
}

std::string describe_thread(const Block& b, const Fiber& f) {
    return format("kernel `%s`, block (%u,%u,%u), thread (%u,%u,%u)", b.launch->kernel->name, b.index.x, b.index.y,
                  b.index.z, f.thread.x, f.thread.y, f.thread.z);
}

void set_error(Block& b, const Fiber* f, const std::string& message) {
    if (b.failed) return;
    b.failed = true;
    if (f) {
        b.error = describe_thread(b, *f) + ": " + message;
    } else {
        b.error = format("kernel `%s`, block (%u,%u,%u): ", b.launch->kernel->name, b.index.x, b.index.y, b.index.z) +
                  message;
    }
}

// Leaves the running fiber for the scheduler; returns when the scheduler resumes it.
void yield_fiber(Fiber& f) { context_switch(f.context, f.block->scheduler); }

void fiber_main(void* argument) {
    auto* f = static_cast<Fiber*>(argument);
    f->block->launch->kernel->entry(f->block->launch->args);
    f->state = State::Exited;
    yield_fiber(*f);
    __builtin_trap();  // an exited fiber is never resumed
}

// ----- signals: shared-memory bounds and stack overflow ------------------------------------------

struct sigaction previous_segv_action, previous_bus_action;

void chain_signal(int signal_number, siginfo_t* info, void* ucontext) {
    const struct sigaction& previous = signal_number == SIGBUS ? previous_bus_action : previous_segv_action;
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(signal_number, info, ucontext);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN && previous.sa_handler) {
        previous.sa_handler(signal_number);
    } else {
        // Restore the default action and return: the faulting instruction runs again and the process
        // dies with the signal as it would have without us.
        signal(signal_number, SIG_DFL);
    }
}

std::string describe_shared_fault(const Block& b, const unsigned char* address) {
    // The nearest allocation: the one that ends at or before the fault (overrun) or starts after it.
    const SharedAllocation* best = nullptr;
    long best_distance = 0;
    for (const auto& a : b.shared) {
        long distance;
        if (address >= a.pointer + a.bytes) {
            distance = static_cast<long>(address - (a.pointer + a.bytes));
        } else if (address < a.pointer) {
            distance = static_cast<long>(a.pointer - address);
        } else {
            continue;
        }
        if (!best || distance < best_distance) {
            best = &a;
            best_distance = distance;
        }
    }
    if (!best) return "shared memory access outside every declared array";
    if (address >= best->pointer + best->bytes) {
        return format("shared memory access out of bounds: byte %ld of `%s`, which is %zu bytes",
                      static_cast<long>(address - best->pointer), best->name, best->bytes);
    }
    return format("shared memory access out of bounds: %ld bytes before `%s`, which is %zu bytes",
                  static_cast<long>(best->pointer - address), best->name, best->bytes);
}

void on_fault(int signal_number, siginfo_t* info, void* ucontext) {
    Worker* w = current_worker;
    Fiber* f = current_fiber;
    if (w && w->block && f && w->block->running == f) {
        auto* address = static_cast<unsigned char*>(info->si_addr);
        Block& b = *w->block;
        std::string message;
        if (w->arena && address >= w->arena && address < w->arena + kArenaBytes) {
            message = describe_shared_fault(b, address);
        } else if (address >= static_cast<unsigned char*>(f->stack_low) - kPage &&
                   address < static_cast<unsigned char*>(f->stack_low)) {
            message = format("stack overflow (each emulated thread has %zu KiB of stack)", kStackBytes / 1024);
        }
        if (!message.empty()) {
            // Abandon the fiber from inside the handler, exactly as siglongjmp would: the handler was
            // installed with SA_NODEFER and an empty mask, so no signal stays blocked.
            set_error(b, f, message);
            yield_fiber(*f);
        }
    }
    chain_signal(signal_number, info, ucontext);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_sigaction = &on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous_segv_action);
        sigaction(SIGBUS, &action, &previous_bus_action);
    });
}

// A stack overflow is handled on the alternate signal stack. Rust threads have one; other threads
// (our own workers) get one here.
void ensure_alternate_signal_stack(Worker& w) {
    stack_t current{};
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
    const size_t bytes = 64 * 1024;
    w.alternate_signal_stack = malloc(bytes);
    stack_t stack{};
    stack.ss_sp = w.alternate_signal_stack;
    stack.ss_size = bytes;
    sigaltstack(&stack, nullptr);
}

// ----- shared memory -------------------------------------------------------------------------

bool reset_arena(Worker& w) {
    if (!w.arena) {
        void* p = mmap(nullptr, kArenaBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        w.arena = static_cast<unsigned char*>(p);
    }
    if (w.arena_used) mprotect(w.arena, w.arena_used, PROT_NONE);
    w.arena_used = 0;
    w.arena_cursor = kPage;  // the first page stays a guard below the first allocation
    return true;
}

// Places `bytes` so that they end (up to 16-byte alignment) right at a guard page: a read or write
// past the end faults at once. The pages are filled with the poison pattern.
unsigned char* arena_allocate(Worker& w, size_t bytes) {
    const size_t rounded = (bytes + 15) & ~static_cast<size_t>(15);
    const size_t pages = (rounded + kPage - 1) / kPage;
    if (w.arena_cursor + (pages + 1) * kPage > kArenaBytes) return nullptr;
    unsigned char* region = w.arena + w.arena_cursor;
    if (pages) {
        mprotect(region, pages * kPage, PROT_READ | PROT_WRITE);
        std::memset(region, kPoison, pages * kPage);
    }
    w.arena_cursor += (pages + 1) * kPage;
    w.arena_used = w.arena_cursor;
    return region + pages * kPage - rounded;
}

// ----- fibers ----------------------------------------------------------------------------------

bool prepare_fibers(Worker& w, unsigned count) {
    while (w.stacks.size() < count) {
        void* p = mmap(nullptr, kPage + kStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, kPage, PROT_NONE);
        w.stacks.push_back(static_cast<unsigned char*>(p));
    }
    if (w.fibers.size() < count) w.fibers.resize(count);
    return true;
}

// ----- warp rendezvous -------------------------------------------------------------------------

unsigned warp_lane_count(const Block& b, unsigned warp) { return std::min(32u, b.threads - warp * 32); }

Fiber& lane_fiber(Block& b, unsigned warp, unsigned lane) { return (*b.fibers)[warp * 32 + lane]; }

const char* state_text(const Fiber& f) {
    switch (f.state) {
        case State::Runnable: return "is still running";
        case State::AtBarrier: return "waits at __syncthreads()";
        case State::AtWarp: return op_name(f.request->op);
        case State::Exited: return "has exited";
    }
    return "?";
}

bool within_shared(const Block& b, const void* address, size_t bytes) {
    auto* p = static_cast<const unsigned char*>(address);
    for (const auto& a : b.shared) {
        if (p >= a.pointer && p + bytes <= a.pointer + a.bytes) return true;
    }
    return false;
}

// Every lane of the group has arrived: compute each lane's result.
bool resolve(Block& b, unsigned warp, unsigned mask) {
    Fiber* lanes[32] = {};
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (mask & (1u << lane)) lanes[lane] = &lane_fiber(b, warp, lane);
    }
    const unsigned first = static_cast<unsigned>(__builtin_ctz(mask));
    const WarpOp op = lanes[first]->request->op;
    auto source_value = [&](unsigned lane, unsigned source, uint64_t& out) {
        if (!(mask & (1u << source))) {
            set_error(b, lanes[lane],
                      format("%s reads lane %u, which is not in the mask 0x%08x", op_name(op), source, mask));
            return false;
        }
        out = lanes[source]->request->value;
        return true;
    };
    switch (op) {
        case WarpOp::Shfl:
        case WarpOp::ShflUp:
        case WarpOp::ShflDown:
        case WarpOp::ShflXor: {
            for (unsigned lane = 0; lane < 32; ++lane) {
                if (!lanes[lane]) continue;
                WarpRequest& r = *lanes[lane]->request;
                const int width = r.width;
                if (width < 1 || width > 32 || (width & (width - 1))) {
                    set_error(b, lanes[lane], format("%s with width %d (must be a power of two up to 32)", op_name(op), width));
                    return false;
                }
                const int segment = static_cast<int>(lane) / width * width;
                int source = static_cast<int>(lane);
                if (op == WarpOp::Shfl) {
                    source = segment + (r.arg & (width - 1));
                } else if (op == WarpOp::ShflUp) {
                    if (static_cast<int>(lane) - r.arg >= segment) source = static_cast<int>(lane) - r.arg;
                } else if (op == WarpOp::ShflDown) {
                    if (static_cast<int>(lane) + r.arg < segment + width) source = static_cast<int>(lane) + r.arg;
                } else {
                    const int target = static_cast<int>(lane) ^ r.arg;
                    if (target < segment + width && target >= 0 && target < 32) source = target;
                }
                if (!source_value(lane, static_cast<unsigned>(source), r.result)) return false;
            }
            break;
        }
        case WarpOp::Ballot:
        case WarpOp::Any:
        case WarpOp::All:
        case WarpOp::SyncWarp: {
            unsigned ballot = 0;
            for (unsigned lane = 0; lane < 32; ++lane) {
                if (lanes[lane] && lanes[lane]->request->value) ballot |= 1u << lane;
            }
            uint64_t result = ballot;
            if (op == WarpOp::Any) result = ballot != 0;
            if (op == WarpOp::All) result = ballot == mask;
            for (unsigned lane = 0; lane < 32; ++lane) {
                if (lanes[lane]) lanes[lane]->request->result = result;
            }
            break;
        }
        case WarpOp::Mma: {
            uint32_t a[32][4], bb[32][2];
            float c[32][4];
            for (unsigned lane = 0; lane < 32; ++lane) {
                const WarpRequest& r = *lanes[lane]->request;
                std::memcpy(a[lane], r.in0, sizeof(a[lane]));
                std::memcpy(bb[lane], r.in1, sizeof(bb[lane]));
                std::memcpy(c[lane], r.in2, sizeof(c[lane]));
            }
            float d[32][4];
            mma_tile(lanes[first]->request->variant, a, bb, c, d);
            for (unsigned lane = 0; lane < 32; ++lane) std::memcpy(lanes[lane]->request->out, d[lane], sizeof(d[lane]));
            break;
        }
        case WarpOp::LdMatrix: {
            const int variant = lanes[first]->request->variant;
            const int count = variant & 7;
            const bool transpose = variant & 8;
            const void* rows[32];
            for (unsigned lane = 0; lane < 32; ++lane) {
                rows[lane] = lanes[lane]->request->in0;
                if (lanes[lane]->request->variant != variant) {
                    set_error(b, lanes[lane], "ldmatrix: the lanes of the warp disagree on the matrix count or .trans");
                    return false;
                }
            }
            for (int m = 0; m < count * 8; ++m) {
                if (reinterpret_cast<uintptr_t>(rows[m]) % 16 != 0) {
                    set_error(b, lanes[m], "ldmatrix: the row address is not 16-byte aligned");
                    return false;
                }
                if (!within_shared(b, rows[m], 16)) {
                    set_error(b, lanes[m], "ldmatrix: the 16-byte row lies outside every shared-memory array");
                    return false;
                }
            }
            uint32_t registers[32][4];
            ldmatrix_gather(count, transpose, rows, registers);
            for (unsigned lane = 0; lane < 32; ++lane) {
                std::memcpy(lanes[lane]->request->out, registers[lane], sizeof(uint32_t) * count);
            }
            break;
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (lanes[lane]) lanes[lane]->state = State::Runnable;
    }
    return true;
}

// A lane has arrived at a warp primitive: check its request, and complete the rendezvous if every
// lane it names is there. Returns false after reporting an error.
bool arrive(Block& b, Fiber& f) {
    const unsigned warp = f.linear / 32, lane = f.linear % 32;
    const WarpRequest& r = *f.request;
    const unsigned lanes_in_warp = warp_lane_count(b, warp);
    if (!(r.mask & (1u << lane))) {
        set_error(b, &f, format("%s with mask 0x%08x, which does not name the calling lane %u", op_name(r.op), r.mask, lane));
        return false;
    }
    if (lanes_in_warp < 32 && (r.mask >> lanes_in_warp)) {
        set_error(b, &f, format("%s with mask 0x%08x names lanes that do not exist (this warp has %u threads)",
                               op_name(r.op), r.mask, lanes_in_warp));
        return false;
    }
    for (unsigned other = 0; other < 32; ++other) {
        if (!(r.mask & (1u << other))) continue;
        const Fiber& o = lane_fiber(b, warp, other);
        if (o.state == State::Exited) {
            set_error(b, &f, format("%s with mask 0x%08x waits for lane %u, which has exited", op_name(r.op), r.mask, other));
            return false;
        }
        if (o.state != State::AtWarp) return true;  // not everyone is here yet
    }
    for (unsigned other = 0; other < 32; ++other) {
        if (!(r.mask & (1u << other))) continue;
        const WarpRequest& o = *lane_fiber(b, warp, other).request;
        if (o.op != r.op || o.mask != r.mask) {
            set_error(b, &f, format("lanes of one warp meet at different warp primitives: lane %u at %s (mask 0x%08x), "
                                    "lane %u at %s (mask 0x%08x)", lane, op_name(r.op), r.mask, other,
                                    op_name(o.op), o.mask));
            return false;
        }
    }
    return resolve(b, warp, r.mask);
}

// A lane has exited: any lane of its warp that waits for it at a warp primitive never completes.
bool check_exit(Block& b, Fiber& f) {
    const unsigned warp = f.linear / 32, lane = f.linear % 32;
    for (unsigned other = 0; other < warp_lane_count(b, warp); ++other) {
        Fiber& o = lane_fiber(b, warp, other);
        if (o.state == State::AtWarp && (o.request->mask & (1u << lane))) {
            set_error(b, &o, format("%s with mask 0x%08x waits for lane %u, which has exited", op_name(o.request->op),
                                    o.request->mask, lane));
            return false;
        }
    }
    return true;
}

// Nothing can run and not every live thread waits at the barrier: name who waits for whom.
void report_deadlock(Block& b) {
    std::vector<Fiber>& fibers = *b.fibers;
    unsigned at_barrier = 0;
    for (unsigned i = 0; i < b.threads; ++i) at_barrier += fibers[i].state == State::AtBarrier;
    for (unsigned i = 0; i < b.threads; ++i) {
        Fiber& f = fibers[i];
        if (f.state != State::AtWarp) continue;
        const unsigned warp = f.linear / 32;
        for (unsigned other = 0; other < 32; ++other) {
            if (!(f.request->mask & (1u << other))) continue;
            Fiber& o = lane_fiber(b, warp, other);
            if (o.state == State::AtWarp) continue;
            if (at_barrier) {
                set_error(b, &f, format("never reaches the __syncthreads() at which %u threads wait: it waits at %s "
                                        "(mask 0x%08x) for lane %u, which %s", at_barrier, op_name(f.request->op),
                                        f.request->mask, other, state_text(o)));
            } else {
                set_error(b, &f, format("%s (mask 0x%08x) waits for lane %u, which %s", op_name(f.request->op),
                                        f.request->mask, other, state_text(o)));
            }
            return;
        }
    }
    set_error(b, nullptr, "deadlock: no thread can make progress");
}

// The bytes between an allocation's page start and the allocation itself are poison that no kernel
// may change: a write there is an underrun too small to reach the guard page below. It is found
// after the block, so the message names the block and the array but not the thread.
void check_front_slack(Block& b) {
    for (const auto& a : b.shared) {
        const auto page_start = reinterpret_cast<uintptr_t>(a.pointer) & ~(kPage - 1);
        for (auto* p = reinterpret_cast<const unsigned char*>(page_start); p < a.pointer; ++p) {
            if (*p != kPoison) {
                set_error(b, nullptr, format("shared memory written out of bounds: byte %ld before `%s`, which is "
                                             "%zu bytes", static_cast<long>(a.pointer - p), a.name, a.bytes));
                return;
            }
        }
    }
}

uint64_t splitmix(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Runs one block to completion or to its first error.
void run_block(Worker& w, Block& b) {
    const LaunchParams& p = *b.launch;
    current_block_idx = b.index;
    current_block_dim = dim3{p.block[0], p.block[1], p.block[2]};
    current_grid_dim = dim3{p.grid[0], p.grid[1], p.grid[2]};
    block_generation = next_generation.fetch_add(1);
    w.block = &b;
    if (!reset_arena(w)) {
        set_error(b, nullptr, "cannot map the shared-memory arena");
        return;
    }
    b.dynamic = arena_allocate(w, p.dynamic_shared_bytes);
    if (!b.dynamic) {
        set_error(b, nullptr, "dynamic shared memory does not fit the arena");
        return;
    }
    b.shared.push_back({"dynamic shared memory", static_cast<unsigned char*>(b.dynamic), p.dynamic_shared_bytes});
    b.total_shared_bytes = p.dynamic_shared_bytes;

    std::vector<Fiber>& fibers = w.fibers;
    b.fibers = &fibers;
    for (unsigned i = 0; i < b.threads; ++i) {
        Fiber& f = fibers[i];
        f = Fiber{};
        f.linear = i;
        f.thread = uint3{i % p.block[0], (i / p.block[0]) % p.block[1], i / (p.block[0] * p.block[1])};
        f.block = &b;
        f.stack_low = w.stacks[i] + kPage;
        context_init(f.context, f.stack_low, kStackBytes, &fiber_main, &f);
    }

    uint64_t random_state = p.seed ^ (0x632be59bd9b4e019ull * (b.linear_index + 1));
    std::vector<unsigned> queue;
    queue.reserve(b.threads);
    unsigned live = b.threads, exited = 0;
    for (;;) {
        queue.clear();
        for (unsigned i = 0; i < b.threads; ++i) {
            if (fibers[i].state == State::Runnable) queue.push_back(i);
        }
        if (queue.empty()) {
            if (live == 0) {
                check_front_slack(b);
                return;
            }
            unsigned at_barrier = 0;
            for (unsigned i = 0; i < b.threads; ++i) at_barrier += fibers[i].state == State::AtBarrier;
            if (at_barrier != live) {
                report_deadlock(b);
                return;
            }
            if (exited) {
                // Name the first thread that exited without reaching the barrier.
                for (unsigned i = 0; i < b.threads; ++i) {
                    if (fibers[i].state == State::Exited) {
                        set_error(b, &fibers[i], format("exited without reaching the __syncthreads() at which %u "
                                                        "other threads wait", at_barrier));
                        return;
                    }
                }
            }
            for (unsigned i = 0; i < b.threads; ++i) fibers[i].state = State::Runnable;
            continue;
        }
        if (p.order == ORDER_REVERSE) {
            std::reverse(queue.begin(), queue.end());
        } else if (p.order == ORDER_RANDOM) {
            for (size_t i = queue.size(); i > 1; --i) std::swap(queue[i - 1], queue[splitmix(random_state) % i]);
        }
        for (unsigned index : queue) {
            Fiber& f = fibers[index];
            if (f.state != State::Runnable) continue;
            b.running = &f;
            current_fiber = &f;
            current_thread_idx = f.thread;
            context_switch(b.scheduler, f.context);
            b.running = nullptr;
            current_fiber = nullptr;
            if (b.failed) return;
            if (f.state == State::Exited) {
                --live;
                ++exited;
                if (!check_exit(b, f)) return;
            } else if (f.state == State::AtWarp) {
                if (!arrive(b, f)) return;
            }
        }
    }
}

}  // namespace

// ----- the kernel-side API -----------------------------------------------------------------------

void fail(const char* message) {
    Fiber* f = current_fiber;
    if (!f) __builtin_trap();
    set_error(*f->block, f, message);
    yield_fiber(*f);
    __builtin_trap();
}

void syncthreads() {
    Fiber* f = current_fiber;
    f->state = State::AtBarrier;
    yield_fiber(*f);
}

uint64_t warp_rendezvous(WarpRequest& request) {
    Fiber* f = current_fiber;
    f->request = &request;
    f->state = State::AtWarp;
    yield_fiber(*f);
    f->request = nullptr;
    return request.result;
}

void* shared_array(SharedSlot& slot, size_t bytes, size_t align, const char* name) {
    (void)align;  // every allocation is 16-byte aligned
    if (slot.generation == block_generation) {
        return slot.pointer;
    }
    Fiber* f = current_fiber;
    Block& b = *f->block;
    b.static_shared_bytes += bytes;
    b.total_shared_bytes += bytes;
    if (b.static_shared_bytes > kMaxStaticSharedBytes) {
        fail(format("static shared memory of %zu bytes (with `%s`) exceeds the 48 KiB limit", b.static_shared_bytes, name)
                 .c_str());
    }
    if (b.total_shared_bytes > kMaxSharedBytes) {
        fail(format("shared memory of %zu bytes (with `%s`) exceeds the 227 KiB limit", b.total_shared_bytes, name)
                 .c_str());
    }
    auto* pointer = arena_allocate(*current_worker, bytes);
    if (!pointer) fail("shared memory does not fit the emulator's arena");
    b.shared.push_back({name, pointer, bytes});
    slot.generation = block_generation;
    slot.pointer = pointer;
    slot.bytes = bytes;
    return pointer;
}

void* dynamic_shared() { return current_fiber->block->dynamic; }

void mma_m16n8k16(int variant, const uint32_t a[4], const uint32_t b[2], const float c[4], float d[4]) {
    WarpRequest r{};
    r.op = WarpOp::Mma;
    r.mask = 0xffffffffu;
    r.in0 = a;
    r.in1 = b;
    r.in2 = c;
    r.out = d;
    r.variant = variant;
    warp_rendezvous(r);
}

void ldmatrix(int count, bool transpose, const void* row_address, uint32_t* registers) {
    WarpRequest r{};
    r.op = WarpOp::LdMatrix;
    r.mask = 0xffffffffu;
    r.in0 = row_address;
    r.out = registers;
    r.variant = count | (transpose ? 8 : 0);
    warp_rendezvous(r);
}

}  // namespace emu

// ----- launch ----------------------------------------------------------------------------------

namespace {

std::string validate(const emu::LaunchParams& p) {
    using emu::format;
    const uint64_t threads = static_cast<uint64_t>(p.block[0]) * p.block[1] * p.block[2];
    if (!p.kernel || !p.kernel->entry) return "no kernel given";
    if (p.grid[0] == 0 || p.grid[1] == 0 || p.grid[2] == 0 || threads == 0) {
        return format("empty launch: grid (%u,%u,%u), block (%u,%u,%u)", p.grid[0], p.grid[1], p.grid[2], p.block[0],
                      p.block[1], p.block[2]);
    }
    if (threads > 1024 || p.block[2] > 64) {
        return format("block (%u,%u,%u) exceeds the GPU's limits (1024 threads, z <= 64)", p.block[0], p.block[1],
                      p.block[2]);
    }
    if (p.grid[1] > 65535 || p.grid[2] > 65535) {
        return format("grid (%u,%u,%u) exceeds the GPU's limits (y and z <= 65535)", p.grid[0], p.grid[1], p.grid[2]);
    }
    if (p.dynamic_shared_bytes > emu::kMaxSharedBytes) {
        return format("%u bytes of dynamic shared memory exceed the 227 KiB limit", p.dynamic_shared_bytes);
    }
    if (p.order != emu::ORDER_FORWARD && p.order != emu::ORDER_REVERSE && p.order != emu::ORDER_RANDOM) {
        return format("unknown scheduling order %d", p.order);
    }
    return {};
}

// Runs blocks [next, total) taken one at a time from `next`; stops early once any block failed.
void run_blocks(const emu::LaunchParams& p, std::atomic<uint64_t>& next, std::atomic<bool>& stop,
                std::mutex& error_lock, uint64_t& failed_block, std::string& error) {
    using namespace emu;
    Worker& w = worker();
    ensure_alternate_signal_stack(w);
    const unsigned threads = p.block[0] * p.block[1] * p.block[2];
    if (!prepare_fibers(w, threads)) {
        std::lock_guard<std::mutex> guard(error_lock);
        error = "cannot map fiber stacks";
        stop = true;
        return;
    }
    const uint64_t total = static_cast<uint64_t>(p.grid[0]) * p.grid[1] * p.grid[2];
    for (;;) {
        if (stop.load(std::memory_order_relaxed)) break;
        const uint64_t index = next.fetch_add(1);
        if (index >= total) break;
        Block b{};
        b.launch = &p;
        b.linear_index = static_cast<unsigned>(index);
        b.index = uint3{static_cast<unsigned>(index % p.grid[0]), static_cast<unsigned>(index / p.grid[0] % p.grid[1]),
                        static_cast<unsigned>(index / p.grid[0] / p.grid[1])};
        b.threads = threads;
        run_block(w, b);
        w.block = nullptr;
        if (b.failed) {
            std::lock_guard<std::mutex> guard(error_lock);
            // Several workers may fail; keep the lowest block so the message does not depend on timing.
            if (error.empty() || index < failed_block) {
                error = b.error;
                failed_block = index;
            }
            stop = true;
        }
    }
    if (w.arena_used) mprotect(w.arena, w.arena_used, PROT_NONE);
    w.arena_used = 0;
}

}  // namespace

extern "C" int emu_launch(const emu::LaunchParams* params, char* error, size_t error_capacity) {
    std::string message = validate(*params);
    if (message.empty()) {
        emu::install_fault_handler();
        std::atomic<uint64_t> next{0};
        std::atomic<bool> stop{false};
        std::mutex error_lock;
        uint64_t failed_block = 0;
        const uint64_t blocks = static_cast<uint64_t>(params->grid[0]) * params->grid[1] * params->grid[2];
        const unsigned workers = static_cast<unsigned>(std::min<uint64_t>(std::max(params->workers, 1u), blocks));
        std::vector<std::thread> helpers;
        for (unsigned i = 1; i < workers; ++i) {
            helpers.emplace_back(run_blocks, std::cref(*params), std::ref(next), std::ref(stop), std::ref(error_lock),
                                 std::ref(failed_block), std::ref(message));
        }
        run_blocks(*params, next, stop, error_lock, failed_block, message);
        for (auto& helper : helpers) helper.join();
    }
    if (message.empty()) return 0;
    if (error && error_capacity) {
        std::snprintf(error, error_capacity, "%s", message.c_str());
    }
    return 1;
}

extern "C" const emu::KernelEntry* emu_find_kernel(const emu::KernelEntry* const* tables, const char* name) {
    for (; *tables; ++tables) {
        for (const emu::KernelEntry* entry = *tables; entry->name; ++entry) {
            if (std::strcmp(entry->name, name) == 0) return entry;
        }
    }
    return nullptr;
}
