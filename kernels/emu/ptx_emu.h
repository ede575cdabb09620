// ptx_emu.h: the emulated replacements of flash_attention.cu's "PTX wrappers" section (run.py
// swaps this in for the inline assembly).
inline void cp_async16(void* dst, const void* src, bool valid) { emu_cp_async16(dst, src, valid); }
inline void cp_async_commit() { emu_cp_async_commit(); }
inline void cp_async_wait_all() { emu_cp_async_wait_all(); }
inline void cp_async_wait_one() { emu_cp_async_wait_one(); }
inline void ldsm4(u32 (&r)[4], const bf16* p) { emu_ldmatrix_x4(r, p, false); }
inline void ldsm4_t(u32 (&r)[4], const bf16* p) { emu_ldmatrix_x4(r, p, true); }
inline void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma_16816(c, a, b0, b1); }
inline u32 pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    u32 r;
    std::memcpy(&r, &v, 4);
    return r;
}
