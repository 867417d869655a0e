/* What a JPEG store's decode spends on chroma upsampling and colour conversion: each JPEG of a store
 * shard decoded to RGB (what the loader does) and to its YCbCr planes as stored (libjpeg's
 * raw_data_out: entropy decoding and IDCT only), best of --reps passes each, alternately.
 *
 *     alexnet prepare FOLDER STORE --format jpeg          # or any store of 4:2:0 JPEGs
 *     gcc -O2 bench/jpeg_planes.c -o /tmp/jpeg_planes -ljpeg    # needs libjpeg's headers
 *     /tmp/jpeg_planes STORE/train/shards/000000.bin [reps]
 *
 * Not part of the package: no Python decoder at hand exposes a decode to planes (bench/README.md,
 * "Decoding alone"); this measures what one would save. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <jpeglib.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Decodes every JPEG of buf (concatenated, as in a shard) once; returns the count. */
static int pass(struct jpeg_decompress_struct *c, const unsigned char *buf, size_t n, int planes,
                JSAMPLE *pixels) {
    int count = 0;
    const unsigned char *at = buf;
    while ((size_t)(at - buf) + 4 < n) {
        jpeg_mem_src(c, at, (unsigned long)(n - (at - buf)));
        jpeg_read_header(c, TRUE);
        if (planes) {
            if (c->comp_info[0].h_samp_factor != 2 || c->comp_info[0].v_samp_factor != 2) {
                fprintf(stderr, "jpeg_planes: a JPEG that is not 4:2:0\n");
                exit(2);
            }
            c->raw_data_out = TRUE;
        } else {
            c->out_color_space = JCS_RGB;
        }
        jpeg_start_decompress(c);
        JDIMENSION w = c->output_width, h = c->output_height, cw = (w + 1) / 2;
        while (c->output_scanline < h) {
            if (planes) {
                JSAMPROW y[16], cb[8], cr[8];
                JDIMENSION s = c->output_scanline;
                for (int i = 0; i < 16; i++) y[i] = pixels + (size_t)((s + i) % h) * w;
                for (int i = 0; i < 8; i++) {
                    cb[i] = pixels + (size_t)w * h + (size_t)((s / 2 + i) % h) * cw;
                    cr[i] = cb[i] + (size_t)cw * h;
                }
                JSAMPARRAY rows[3] = {y, cb, cr};
                jpeg_read_raw_data(c, rows, 16);
            } else {
                JSAMPROW row = pixels + (size_t)c->output_scanline * w * 3;
                jpeg_read_scanlines(c, &row, 1);
            }
        }
        jpeg_finish_decompress(c);
        at = c->src->next_input_byte;  /* the next JPEG starts where this one's bytes ended */
        count++;
    }
    return count;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: jpeg_planes SHARD.bin [reps]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n);
    if (fread(buf, 1, n, f) != n) {
        fprintf(stderr, "jpeg_planes: cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    JSAMPLE *pixels = malloc((size_t)4096 * 4096 * 3);
    struct jpeg_decompress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_decompress(&c);
    double best[2] = {1e30, 1e30};
    int count = 0;
    for (int r = 0; r < reps; r++) {
        for (int planes = 0; planes < 2; planes++) {
            double t = now();
            count = pass(&c, buf, n, planes, pixels);
            t = (now() - t) / count;
            if (t < best[planes]) best[planes] = t;
        }
    }
    printf("%d JPEGs, best of %d passes: RGB %.1f us an image, YCbCr planes %.1f us (%.2f of RGB)\n", count,
           reps, best[0] * 1e6, best[1] * 1e6, best[1] / best[0]);
    jpeg_destroy_decompress(&c);
    return 0;
}
