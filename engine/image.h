/* image.h - frames to the towers' input: any pixel format to packed RGB, Pillow's BICUBIC
 * resize (bit-exact), and per-tower normalisation. */
#ifndef COBRA_IMAGE_H
#define COBRA_IMAGE_H

#include <glib.h>
#include <stdint.h>

#include "cobra.h"

/* Check an image's format, size, planes and strides; error names the bad value. */
gboolean image_validate(const CobraImage *img, GError **error);

/* Convert any supported format to packed RGB rgb[height][width][3]. */
void image_to_rgb(const CobraImage *img, uint8_t *rgb);

/* Pillow Image.resize((dw, dh), BICUBIC) of packed RGB src[sh][sw][3] into dst[dh][dw][3]:
 * horizontal pass first into a uint8 intermediate, then vertical, fixed-point coefficients,
 * exactly as Pillow's Resample.c. tmp must hold sh * dw * 3 bytes. */
void resize_bicubic_rgb(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh,
                        uint8_t *tmp);

/* out[3][S][S] = (rgb[S][S][c] / 255 - mean[c]) / std[c], channels R, G, B. */
void normalize_rgb(const uint8_t *rgb, int size, const float mean[3], const float std[3],
                   float *out);

#endif
