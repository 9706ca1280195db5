// The tensor-core wrappers of common.cuh, one warp each: tests/emulator.rs checks the results against
// a plain CPU matrix product and against the PTX ISA fragment layouts.
#include "common.cuh"

// Dumps the registers ldmatrix gives each lane, for a block of four 8x8 matrices of 16-bit values
// laid out row after row (matrix m, row r at element (8m + r) * 8). `count` is 1, 2 or 4; `transpose`
// selects .trans. registers[lane * 4 + i] receives register i.
extern "C" __global__ void ldmatrix_dump(const uint16_t* matrices, uint32_t* registers, int count, int transpose) {
    SHARED_ARRAY(uint16_t, tile, 4 * 8 * 8);
    const int lane = threadIdx.x;
    for (int i = lane; i < 4 * 8 * 8; i += 32) tile[i] = matrices[i];
    __syncwarp();
    uint32_t r[4] = {0, 0, 0, 0};
    const uint16_t* row = tile + lane * 8;  // lane 8m + r addresses row r of matrix m
    if (count == 1 && !transpose) ldmatrix_x1(r, row);
    if (count == 2 && !transpose) ldmatrix_x2(r, row);
    if (count == 4 && !transpose) ldmatrix_x4(r, row);
    if (count == 1 && transpose) ldmatrix_x1_trans(r, row);
    if (count == 2 && transpose) ldmatrix_x2_trans(r, row);
    if (count == 4 && transpose) ldmatrix_x4_trans(r, row);
    for (int i = 0; i < 4; ++i) registers[lane * 4 + i] = r[i];
}

// D = A B + C for A 16x16 and B 16x8 (both row-major 16-bit bits, `f16` selects the type), C and D
// 16x8 f32. A is loaded with ldmatrix.x4, B (stored k-major) with ldmatrix.x2.trans: the way an
// attention kernel loads Q and V tiles.
extern "C" __global__ void mma_tile_product(const uint16_t* a, const uint16_t* b, const float* c, float* d, int f16) {
    SHARED_ARRAY(uint16_t, a_tile, 16 * 16);
    SHARED_ARRAY(uint16_t, b_tile, 16 * 8);
    const int lane = threadIdx.x;
    for (int i = lane; i < 16 * 16; i += 32) a_tile[i] = a[i];
    for (int i = lane; i < 16 * 8; i += 32) b_tile[i] = b[i];
    __syncwarp();
    // A's four 8x8 quadrants in fragment order: rows 0-7 / 8-15 of columns 0-7, then of columns 8-15.
    uint32_t a_frag[4], b_frag[2];
    ldmatrix_x4(a_frag, a_tile + (lane % 16) * 16 + (lane / 16) * 8);
    ldmatrix_x2_trans(b_frag, b_tile + (lane % 16) * 8);
    const int g = lane / 4, t = lane % 4;
    float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    if (f16) {
        mma_m16n8k16_f16(acc, a_frag, b_frag, acc);
    } else {
        mma_m16n8k16_bf16(acc, a_frag, b_frag, acc);
    }
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
