// flash_check.cpp: runs flash_attention.cu's kernels under cuda_emu.h on small shapes and compares
// out, lse, dq, dk, dv with a float64 reference of attention.cu's semantics (every mask kind, key
// padding, GQA/MQA, head dims 64/72/80/128/256, lengths that are not tile multiples, a batch row
// whose keys are all padded). Outputs start as NaN so an unwritten element fails. Built and run by
// run.py.
#include "flash_tu.h"

#include <cstdio>
#include <limits>
#include <string>

using Fwd = void (*)(const AttnParams, const bf16*, const bf16*, const bf16*, bf16*, float*);
using DkDv = void (*)(const AttnParams, const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*,
                      bf16*, bf16*, float*, float*);
using Dq = void (*)(const AttnParams, const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*,
                    bf16*);

struct Variant {
    int tile, bc, split;
    Fwd fwd;
    DkDv dkdv;
    Dq dq;
    Fwd fwd_long;  // 128-row blocks (null where there is none)
    int bc_long;
};
static const Variant VARIANTS[] = {
    {64, 64, 1, flash_attention_d64_fwd_bf16, flash_attention_d64_bwd_bf16, flash_attention_dq_d64_bwd_bf16,
     flash_attention_long_d64_fwd_bf16, 64},
    {80, 64, 1, flash_attention_d80_fwd_bf16, flash_attention_d80_bwd_bf16, flash_attention_dq_d80_bwd_bf16,
     flash_attention_long_d80_fwd_bf16, 64},
    {128, 64, 1, flash_attention_d128_fwd_bf16, flash_attention_d128_bwd_bf16, flash_attention_dq_d128_bwd_bf16,
     flash_attention_long_d128_fwd_bf16, 32},
    {256, 32, 2, flash_attention_d256_fwd_bf16, flash_attention_d256_bwd_bf16, flash_attention_dq_d256_bwd_bf16,
     nullptr, 0},
};

struct Case {
    std::string name;
    int b, hq, hkv, lq, lk, d, mask;
    std::vector<i64> mask_data;
    std::vector<u8> padding;  // [b, lk] or empty
};

static std::mt19937 rng(7);
static float randn() {
    static std::normal_distribution<float> n(0.0f, 1.0f);
    return n(rng);
}
static bf16 to_bf(float f) { return __float2bfloat16_rn(f); }
static float of_bf(bf16 h) { return __bfloat162float(h); }

// A [B, H, L, D] tensor stored heads-first or seq-first, with its strides.
struct T4 {
    int B, H, L, D;
    bool seq_first;
    std::vector<bf16> data;
    Strides st() const {
        if (seq_first) return {(i64)L * H * D, (i64)D, (i64)H * D};
        return {(i64)H * L * D, (i64)L * D, (i64)D};
    }
    i64 at(int b, int h, int l, int c) const {
        const Strides s = st();
        return b * s.b + h * s.h + l * s.l + c;
    }
    double get(int b, int h, int l, int c) const { return of_bf(data[at(b, h, l, c)]); }
};
static T4 make(int B, int H, int L, int D, bool seq_first, bool random) {
    T4 t{B, H, L, D, seq_first, std::vector<bf16>((size_t)B * H * L * D)};
    for (auto& x : t.data) x = random ? to_bf(randn()) : bf16{0x7fc0};  // NaN poison
    return t;
}

static void key_range_ref(const Case& c, int b, int i, int& lo, int& hi) {
    lo = 0;
    hi = c.lk;
    if (c.mask == MASK_CAUSAL) hi = std::min(c.lk, i + c.lk - c.lq + 1);
    if (c.mask == MASK_PREFIX) hi = std::min(c.lk, std::max(i + 1, (int)c.mask_data[b]));
    if (c.mask == MASK_SEGMENTS) {
        int s = 0;
        for (int k = 0; k + 1 < (int)c.mask_data.size(); ++k)
            if (c.mask_data[k] <= i) s = k;
        lo = (int)c.mask_data[s];
        hi = std::min(c.lk, (int)c.mask_data[s + 1]);
    }
    hi = std::max(hi, 0);
}

static double rel(const std::vector<double>& x, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        if (std::isnan(x[i])) return INFINITY;
        num += (x[i] - ref[i]) * (x[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

static bool run(const Case& c) {
    const Variant* var = nullptr;
    for (auto& v : VARIANTS)
        if (v.tile >= c.d) {
            var = &v;
            break;
        }
    const int D = c.d;
    T4 q = make(c.b, c.hq, c.lq, D, false, true), k = make(c.b, c.hkv, c.lk, D, true, true),
       v = make(c.b, c.hkv, c.lk, D, true, true), g = make(c.b, c.hq, c.lq, D, true, true);
    T4 out = make(c.b, c.hq, c.lq, D, true, false), dq = make(c.b, c.hq, c.lq, D, false, false),
       dk = make(c.b, c.hkv, c.lk, D, false, false), dv = make(c.b, c.hkv, c.lk, D, false, false);
    const int rows = c.b * c.hq * c.lq;
    std::vector<float> lse(rows, NAN), delta(rows, NAN);
    AttnParams p{};
    p.q = q.st();
    p.k = k.st();
    p.v = v.st();
    p.o = out.st();
    p.g = g.st();
    p.dq = dq.st();
    p.dk = dk.st();
    p.dv = dv.st();
    p.mask_data = c.mask_data.empty() ? nullptr : c.mask_data.data();
    p.key_padding = c.padding.empty() ? nullptr : c.padding.data();
    p.b = c.b, p.hq = c.hq, p.hkv = c.hkv, p.lq = c.lq, p.lk = c.lk, p.d = D, p.dv_dim = D;
    p.mask = c.mask;
    p.n_segments = c.mask == MASK_SEGMENTS ? (int)c.mask_data.size() - 1 : 0;
    p.scale = 1.0f / std::sqrt((float)D);

    const int T = var->tile, P = T + 8;
    auto cdiv = [](int a, int b) { return (unsigned)((a + b - 1) / b); };
    emu_launch({cdiv(c.lq, FA_BR), (unsigned)(c.b * c.hq), 1}, {FA_THREADS, 1, 1}, (size_t)(FA_BR + 2 * var->bc) * P * 2,
               [&] { var->fwd(p, q.data.data(), k.data.data(), v.data.data(), out.data.data(), lse.data()); });
    // The 128-row forward gives the same out and lse: bit for bit with the same key tile (the same
    // arithmetic per row), within rounding with another (the online softmax rescales elsewhere).
    bool long_ok = true;
    if (var->fwd_long) {
        T4 out2 = make(c.b, c.hq, c.lq, D, true, false);
        std::vector<float> lse2(rows, NAN);
        emu_launch({cdiv(c.lq, 2 * FA_BR), (unsigned)(c.b * c.hq), 1}, {FA_THREADS, 1, 1},
                   (size_t)(2 * FA_BR + 2 * var->bc_long) * P * 2,
                   [&] { var->fwd_long(p, q.data.data(), k.data.data(), v.data.data(), out2.data.data(), lse2.data()); });
        const bool exact = var->bc_long == var->bc;
        double num = 0, den = 0;
        for (int b = 0; b < c.b; ++b)
            for (int h = 0; h < c.hq; ++h)
                for (int i = 0; i < c.lq; ++i)
                    for (int d = 0; d < D; ++d) {
                        const double x = out2.get(b, h, i, d), y = out.get(b, h, i, d);
                        if (exact && x != y) long_ok = false;
                        num += (x - y) * (x - y), den += y * y;
                    }
        if (!(std::sqrt(num / std::max(den, 1e-30)) < 1e-2)) long_ok = false;  // NaN fails
        for (int r = 0; r < rows; ++r) {
            const bool both_inf = std::isinf(lse2[r]) && std::isinf(lse[r]);
            if (!both_inf && !(std::fabs(lse2[r] - lse[r]) <= (exact ? 0.0f : 1e-4f))) long_ok = false;
        }
    }
    emu_launch({cdiv(rows, FA_DELTA_ROWS), 1, 1}, {FA_DELTA_ROWS * 32, 1, 1}, 0,
               [&] { flash_attention_delta_bwd_bf16(p, out.data.data(), g.data.data(), delta.data()); });
    emu_launch({cdiv(c.lk, FA_BWD_BC), (unsigned)(c.b * c.hkv), (unsigned)var->split}, {FA_THREADS, 1, 1},
               (size_t)(2 * FA_BWD_BC + (var->tile <= 128 ? 4 : 2) * FA_BWD_BR) * P * 2 + 32 * FA_BWD_BR, [&] {
                   var->dkdv(p, q.data.data(), k.data.data(), v.data.data(), g.data.data(), lse.data(), delta.data(),
                             dk.data.data(), dv.data.data(), nullptr, nullptr);
               });
    // With the kv group's query heads split over 2 blocks: fp32 partials, then the sum kernel;
    // the same dK, dV up to the order of the fp32 sums.
    bool split_ok = true;
    const int group = c.hq / c.hkv;
    if (group % 2 == 0) {
        const int parts = 2;
        const size_t pe = (size_t)parts * c.b * c.hkv * c.lk * D;
        std::vector<float> pk(pe, NAN), pv(pe, NAN);
        T4 dk2 = make(c.b, c.hkv, c.lk, D, false, false), dv2 = make(c.b, c.hkv, c.lk, D, false, false);
        emu_launch({cdiv(c.lk, FA_BWD_BC), (unsigned)(c.b * c.hkv), (unsigned)(var->split * parts)}, {FA_THREADS, 1, 1},
                   (size_t)(2 * FA_BWD_BC + (var->tile <= 128 ? 4 : 2) * FA_BWD_BR) * P * 2 + 32 * FA_BWD_BR, [&] {
                       var->dkdv(p, q.data.data(), k.data.data(), v.data.data(), g.data.data(), lse.data(), delta.data(),
                                 dk2.data.data(), dv2.data.data(), pk.data(), pv.data());
                   });
        emu_launch({3, 1, 1}, {256, 1, 1}, 0, [&] {
            flash_attention_dkdv_sum_bwd_bf16(p, pk.data(), pv.data(), parts, dk2.data.data(), dv2.data.data());
        });
        double num = 0, den = 0;
        for (size_t i = 0; i < dk.data.size(); ++i)
            for (const auto* pr : {&dk, &dv}) {
                const T4& a = *pr;
                const T4& b2 = pr == &dk ? dk2 : dv2;
                const double x = of_bf(b2.data[i]), y = of_bf(a.data[i]);
                num += (x - y) * (x - y), den += y * y;
            }
        split_ok = std::sqrt(num / std::max(den, 1e-30)) < 1e-2;  // NaN fails
    }
    emu_launch({cdiv(c.lq, FA_BR), (unsigned)(c.b * c.hq), 1}, {FA_THREADS, 1, 1}, (size_t)(2 * FA_BR + (var->tile <= 128 ? 4 : 2) * var->bc) * P * 2,
               [&] {
                   var->dq(p, q.data.data(), k.data.data(), v.data.data(), g.data.data(), lse.data(), delta.data(),
                           dq.data.data());
               });

    // float64 reference on the same bf16 inputs.
    const double scale = p.scale;
    std::vector<double> r_out, r_lse, r_dq, x_out, x_lse, x_dq;
    std::vector<double> r_dk((size_t)c.b * c.hkv * c.lk * D, 0.0), r_dv(r_dk.size(), 0.0);
    bool lse_inf_ok = true;
    for (int b = 0; b < c.b; ++b)
        for (int h = 0; h < c.hq; ++h) {
            const int hk = h / (c.hq / c.hkv);
            for (int i = 0; i < c.lq; ++i) {
                int lo, hi;
                key_range_ref(c, b, i, lo, hi);
                std::vector<int> keys;
                for (int j = lo; j < hi; ++j)
                    if (c.padding.empty() || c.padding[(size_t)b * c.lk + j]) keys.push_back(j);
                std::vector<double> s(keys.size()), pr(keys.size()), dp(keys.size());
                double m = -INFINITY;
                for (size_t n = 0; n < keys.size(); ++n) {
                    double acc = 0;
                    for (int d = 0; d < D; ++d) acc += q.get(b, h, i, d) * k.get(b, hk, keys[n], d);
                    s[n] = acc * scale;
                    m = std::max(m, s[n]);
                }
                double l = 0;
                for (size_t n = 0; n < keys.size(); ++n) l += (pr[n] = std::exp(s[n] - m));
                for (auto& x : pr) x /= l;
                const i64 row = ((i64)b * c.hq + h) * c.lq + i;
                if (keys.empty()) {
                    if (!(std::isinf(lse[row]) && lse[row] < 0)) lse_inf_ok = false;
                } else {
                    r_lse.push_back(m + std::log(l));
                    x_lse.push_back(lse[row]);
                }
                std::vector<double> o(D, 0.0);
                for (size_t n = 0; n < keys.size(); ++n)
                    for (int d = 0; d < D; ++d) o[d] += pr[n] * v.get(b, hk, keys[n], d);
                double dl = 0;
                for (int d = 0; d < D; ++d) dl += g.get(b, h, i, d) * o[d];
                for (size_t n = 0; n < keys.size(); ++n) {
                    double acc = 0;
                    for (int d = 0; d < D; ++d) acc += g.get(b, h, i, d) * v.get(b, hk, keys[n], d);
                    dp[n] = pr[n] * (acc - dl);  // dS
                }
                for (int d = 0; d < D; ++d) {
                    double acc = 0;
                    for (size_t n = 0; n < keys.size(); ++n) acc += dp[n] * k.get(b, hk, keys[n], d);
                    r_out.push_back(o[d]);
                    x_out.push_back(out.get(b, h, i, d));
                    r_dq.push_back(acc * scale);
                    x_dq.push_back(dq.get(b, h, i, d));
                }
                for (size_t n = 0; n < keys.size(); ++n)
                    for (int d = 0; d < D; ++d) {
                        const size_t at = (((size_t)b * c.hkv + hk) * c.lk + keys[n]) * D + d;
                        r_dk[at] += scale * dp[n] * q.get(b, h, i, d);
                        r_dv[at] += pr[n] * g.get(b, h, i, d);
                    }
            }
        }
    std::vector<double> x_dk, x_dv;
    for (int b = 0; b < c.b; ++b)
        for (int h = 0; h < c.hkv; ++h)
            for (int j = 0; j < c.lk; ++j)
                for (int d = 0; d < D; ++d) {
                    x_dk.push_back(dk.get(b, h, j, d));
                    x_dv.push_back(dv.get(b, h, j, d));
                }
    double lse_err = 0;
    for (size_t i = 0; i < r_lse.size(); ++i) lse_err = std::max(lse_err, std::fabs(r_lse[i] - x_lse[i]));
    if (std::any_of(x_lse.begin(), x_lse.end(), [](double x) { return std::isnan(x); })) lse_err = INFINITY;
    const double e_out = rel(x_out, r_out), e_dq = rel(x_dq, r_dq), e_dk = rel(x_dk, r_dk), e_dv = rel(x_dv, r_dv);
    // bf16 operands (P and dS rounded to bf16 before their products): errors near 1e-3..1e-2.
    const double tol = 2e-2;
    const bool ok =
        e_out < tol && e_dq < tol && e_dk < tol && e_dv < tol && lse_err < 1e-2 && lse_inf_ok && long_ok && split_ok;
    std::printf("%-44s tile %3d  out %.2e  lse %.2e%s  dq %.2e  dk %.2e  dv %.2e  long fwd %s  split heads %s  %s\n",
                c.name.c_str(), var->tile, e_out, lse_err, lse_inf_ok ? "" : " (empty row lse != -inf)", e_dq, e_dk, e_dv,
                var->fwd_long ? (long_ok ? "agrees" : "DIFFERS") : "-",
                group % 2 == 0 ? (split_ok ? "agrees" : "DIFFERS") : "-", ok ? "ok" : "FAIL");
    return ok;
}

int main(int argc, char** argv) {
    std::vector<Case> cases = {
        {"d64 full gqa 2x(4q/2kv) L100", 2, 4, 2, 100, 100, 64, MASK_FULL, {}, {}},
        {"d72 causal Lq70 Lk130 (bottom-right)", 1, 2, 1, 70, 130, 72, MASK_CAUSAL, {}, {}},
        {"d80 prefix P=[30,90] L100", 2, 2, 2, 100, 100, 80, MASK_PREFIX, {30, 90}, {}},
        {"d128 segments cu=[0,20,75,100]", 1, 2, 2, 100, 100, 128, MASK_SEGMENTS, {0, 20, 75, 100}, {}},
        {"d256 full + key padding (row 1 all padded)", 2, 2, 1, 70, 70, 256, MASK_FULL, {}, {}},
        {"d64 causal mqa 4q/1kv L200", 1, 4, 1, 200, 200, 64, MASK_CAUSAL, {}, {}},
        {"d128 causal Lq1 Lk100", 1, 2, 2, 1, 100, 128, MASK_CAUSAL, {}, {}},
        {"d80 segments + padding, 64-token windows", 1, 2, 2, 192, 192, 80, MASK_SEGMENTS, {0, 64, 128, 192}, {}},
    };
    // Batch row 0: every third key padded; row 1: every key padded.
    cases[4].padding.assign(2 * 70, 1);
    for (int j = 0; j < 70; ++j) {
        cases[4].padding[j] = j % 3 != 0;
        cases[4].padding[70 + j] = 0;
    }
    cases[7].padding.assign(192, 1);
    for (int j = 100; j < 140; ++j) cases[7].padding[j] = 0;
    const std::string only = argc > 1 ? argv[1] : "";
    int failed = 0;
    for (auto& c : cases)
        if (only.empty() || c.name.find(only) != std::string::npos) failed += !run(c);
    std::printf("%s\n", failed ? "FAILED" : "all passed");
    return failed ? 1 : 0;
}
