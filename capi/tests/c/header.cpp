// gradclip.h compiled as C++17 (-Wall -Wextra -Wpedantic -Werror) and called from C++.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gradclip.h"

static_assert(sizeof(gradclip_partial) == 40, "40-byte partial");
static_assert(sizeof(gradclip_exact_partial) == 96, "96-byte exact partial");
static_assert(std::is_trivially_copyable<gradclip_exact_partial>::value, "plain bytes");
static_assert(std::is_trivially_copyable<gradclip_partial>::value, "plain bytes");
static_assert(std::is_standard_layout<gradclip_grad>::value, "C layout");
static_assert(std::is_enum<gradclip_dtype>::value && std::is_enum<gradclip_on_nonfinite>::value &&
                  std::is_enum<gradclip_summation>::value,
              "real enums");
static_assert(GRADCLIP_ERR_INTERNAL == -99, "status codes are integer constants");

int main() {
    std::vector<float> w(1000, 0.5f);
    std::vector<std::uint16_t> h(10, 0x4400);  // f16 4.0
    gradclip_grad_mut grads[] = {{w.data(), w.size(), GRADCLIP_F32},
                                 {h.data(), h.size(), GRADCLIP_F16}};
    const gradclip_grad view[] = {{w.data(), w.size(), GRADCLIP_F32},
                                  {h.data(), h.size(), GRADCLIP_F16}};
    double norm = 0.0;
    if (gradclip_total_norm(view, 2, 2.0, &norm, nullptr) != GRADCLIP_OK ||
        norm != std::sqrt(250.0 + 160.0)) {
        std::fprintf(stderr, "norm %.17g\n", norm);
        return 1;
    }
    // Exact summation: the same bits for the buffers as they are and for w cut in two.
    double exact = 0.0, split = 0.0;
    const gradclip_grad halves[] = {{w.data(), 300, GRADCLIP_F32},
                                    {w.data() + 300, w.size() - 300, GRADCLIP_F32},
                                    {h.data(), h.size(), GRADCLIP_F16}};
    gradclip_exact_partial e{};
    if (gradclip_total_norm_with(view, 2, 2.0, GRADCLIP_SUMMATION_EXACT, &exact, nullptr) !=
            GRADCLIP_OK ||
        gradclip_exact_partial_compute(halves, 3, 2.0, &e) != GRADCLIP_OK ||
        gradclip_exact_partial_finish(&e, &split) != GRADCLIP_OK || exact != split ||
        exact != std::sqrt(250.0 + 160.0)) {
        std::fprintf(stderr, "exact %.17g split %.17g\n", exact, split);
        return 1;
    }
    gradclip_clip_report r{};
    int st = gradclip_clip_grad_norm(grads, 2, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, &r, nullptr);
    if (st != GRADCLIP_OK || r.clipped != 1 || w[0] != 0.5f * static_cast<float>(r.clip_coef)) {
        std::fprintf(stderr, "clip: %s\n", gradclip_status_str(st));
        return 1;
    }
    gradclip_partial p{};
    if (gradclip_partial_compute(view, 2, INFINITY, &p) != GRADCLIP_OK ||
        gradclip_partial_finish(&p, &norm) != GRADCLIP_OK) {
        return 1;
    }
    std::printf("header.cpp: ok (max |x| after clipping %g, isa %s)\n", norm, gradclip_isa());
    return 0;
}
