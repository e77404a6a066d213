/*
 * Clipping the global gradient norm from C: two gradient buffers of different dtypes (f32 and
 * bf16), PyTorch's clip_grad_norm_ semantics. Build (from the repository root):
 *
 *   cargo build --release -p gradclip-capi
 *   cc -std=c11 -O2 -I capi/include capi/examples/clip.c target/release/libgradclip.a \
 *      -lpthread -ldl -lm -o clip && ./clip
 */
#include <stdint.h>
#include <stdio.h>

#include "gradclip.h"

int main(void) {
    static float w[4096];
    static uint16_t b[256]; /* bf16 bit patterns */
    for (int i = 0; i < 4096; i++) w[i] = 0.01f * (float)(i % 17 - 8);
    for (int i = 0; i < 256; i++) b[i] = 0x4040; /* bf16 3.0 */

    gradclip_grad_mut grads[] = {{w, 4096, GRADCLIP_F32}, {b, 256, GRADCLIP_BF16}};
    gradclip_clip_report r;
    gradclip_nonfinite bad;
    int st = gradclip_clip_grad_norm(grads, 2, 1.0, 2.0, GRADCLIP_ON_NONFINITE_ERROR, &r, &bad);
    if (st == GRADCLIP_NONFINITE) {
        printf("NaN/inf in buffer %zu at index %zu: skip this step\n", bad.buffer, bad.index);
        return 1;
    }
    if (st != GRADCLIP_OK) {
        fprintf(stderr, "gradclip: %s\n", gradclip_status_str(st));
        return 1;
    }
    printf("total norm %.6f, coefficient %.6f, clipped %s\n", r.total_norm, r.clip_coef,
           r.clipped ? "yes" : "no");

    /* The norm after clipping is max_norm (up to the rounding of each element). */
    const gradclip_grad view[] = {{w, 4096, GRADCLIP_F32}, {b, 256, GRADCLIP_BF16}};
    double after;
    if (gradclip_total_norm(view, 2, 2.0, &after, NULL) != GRADCLIP_OK) return 1;
    printf("norm after clipping %.6f (gradclip %s, %s kernels)\n", after, gradclip_version(),
           gradclip_isa());
    return 0;
}
