// The emulated twins of `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32` and
// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16`: the warp's 32 lanes' registers are
// gathered into whole matrices using the fragment layouts of the PTX ISA, the product is computed,
// and the result is scattered back. In every layout below, lane = 4 * group + thread_in_group, and a
// 32-bit register holding two 16-bit elements keeps the lower-indexed one in its low half.
#include <cstring>

#include "launch.h"

namespace emu {

namespace {

float element_to_float(int variant, uint16_t bits) {
    return variant == 0 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}
uint16_t low_half(uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); }
uint16_t high_half(uint32_t r) { return static_cast<uint16_t>(r >> 16); }

}  // namespace

// A is 16x16 row-major, B is 16x8 ("col": K runs along each lane's pair), C and D are 16x8 f32.
//   A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..2t+1), a2 = (g, 2t+8..2t+9), a3 = (g+8, 2t+8..2t+9)
//   B: b0 = (k = 2t..2t+1, n = g), b1 = (k = 2t+8..2t+9, n = g)
//   C/D: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// The products of 16-bit values are exact in float; they are summed in k order with fused
// multiply-adds. The GPU's adder tree may round differently in the last bits.
void mma_tile(int variant, const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4], float d[32][4]) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const int rows[4] = {g, g + 8, g, g + 8};
        const int cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; ++r) {
            A[rows[r]][cols[r]] = element_to_float(variant, low_half(a[lane][r]));
            A[rows[r]][cols[r] + 1] = element_to_float(variant, high_half(a[lane][r]));
        }
        for (int r = 0; r < 2; ++r) {
            const int k = 2 * t + 8 * r;
            B[k][g] = element_to_float(variant, low_half(b[lane][r]));
            B[k + 1][g] = element_to_float(variant, high_half(b[lane][r]));
        }
        C[g][2 * t] = c[lane][0];
        C[g][2 * t + 1] = c[lane][1];
        C[g + 8][2 * t] = c[lane][2];
        C[g + 8][2 * t + 1] = c[lane][3];
    }
    float D[16][8];
    for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 8; ++j) {
            float sum = C[i][j];
            for (int k = 0; k < 16; ++k) sum = __builtin_fmaf(A[i][k], B[k][j], sum);
            D[i][j] = sum;
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        d[lane][0] = D[g][2 * t];
        d[lane][1] = D[g][2 * t + 1];
        d[lane][2] = D[g + 8][2 * t];
        d[lane][3] = D[g + 8][2 * t + 1];
    }
}

// Matrix m (of `count`) is 8 rows of 8 16-bit elements; lane 8m + r supplies the address of its row r.
// Lane l receives, in register m, the two elements (l / 4, 2 (l % 4) .. +1) of matrix m, or with .trans
// the two elements (2 (l % 4) .. +1, l / 4): the transpose's row l / 4.
void ldmatrix_gather(int count, bool transpose, const void* const rows[32], uint32_t registers[32][4]) {
    for (int m = 0; m < count; ++m) {
        uint16_t matrix[8][8];
        for (int r = 0; r < 8; ++r) std::memcpy(matrix[r], rows[8 * m + r], 16);
        for (int lane = 0; lane < 32; ++lane) {
            const int row = lane / 4, pair = 2 * (lane % 4);
            const uint16_t lo = transpose ? matrix[pair][row] : matrix[row][pair];
            const uint16_t hi = transpose ? matrix[pair + 1][row] : matrix[row][pair + 1];
            registers[lane][m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
        }
    }
}

}  // namespace emu
