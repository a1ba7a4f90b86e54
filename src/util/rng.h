/*
 * rng.h - small, explicit, portable random numbers: splitmix64 (Steele et al. 2014). Every
 * random stream in paft (LoRA init, generated demo data) derives from a documented seed, so a
 * run is reproducible on any machine.
 */
#ifndef PAFT_RNG_H
#define PAFT_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
} Rng;

static inline uint64_t rng_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline void rng_seed(Rng *rng, uint64_t seed) { rng->state = seed; }
static inline uint64_t rng_u64(Rng *rng) { return rng_splitmix64(&rng->state); }
/* The stream n draws of rng_u64 later: the state only counts, so a long stream can be cut into
 * pieces that threads fill in parallel with the values one thread would have drawn. */
static inline Rng rng_skipped(Rng rng, uint64_t n) {
    rng.state += n * 0x9E3779B97F4A7C15ULL; /* modulo 2^64, as the draws add it */
    return rng;
}
/* Uniform in [0, 1) with 53 random bits. */
static inline double rng_uniform(Rng *rng) { return (double)(rng_u64(rng) >> 11) * 0x1.0p-53; }
/* Standard normal (Box-Muller; one of the pair is discarded for simplicity). */
static inline double rng_normal(Rng *rng) {
    double u1 = rng_uniform(rng), u2 = rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
