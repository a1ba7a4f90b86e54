/* synthetic.c - the generated tasks of synthetic.h. */
#include "data/synthetic.h"

#include "data/token_data.h"
#include "util/common.h"
#include "util/rng.h"

enum { BOS = 0, SEP = 1, EOS = 2, A0 = 3, NA = 21, B0 = 24, C0 = 44, MAXK = 8 };

enum { NB = 20 };

typedef struct {
    uint32_t sigma[NA], rho[NA]; /* first answer token from the last prompt token */
    uint32_t tau[NB], upsilon[NB]; /* next answer token from the previous one (within B / C) */
} Rules;

static void shuffle(uint32_t *v, int n, Rng *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_u64(rng) % (uint64_t)(i + 1));
        uint32_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static Rules make_rules(uint64_t task_seed) {
    Rules r;
    Rng rng;
    rng_seed(&rng, task_seed);
    for (int i = 0; i < NA; i++) {
        r.sigma[i] = (uint32_t)(B0 + i % 20);
        r.rho[i] = (uint32_t)(C0 + i % 20);
    }
    shuffle(r.sigma, NA, &rng);
    shuffle(r.rho, NA, &rng);
    for (int i = 0; i < NB; i++) {
        r.tau[i] = (uint32_t)(B0 + i);
        r.upsilon[i] = (uint32_t)(C0 + i);
    }
    shuffle(r.tau, NB, &rng);
    shuffle(r.upsilon, NB, &rng);
    return r;
}

/* The k answer tokens of a rule: first = first_map(last prompt token), then next_map chained. */
static void answer(uint32_t *out, const uint32_t *prompt, int k, const uint32_t *first_map,
                   const uint32_t *next_map, uint32_t next_base) {
    out[0] = first_map[prompt[k - 1] - A0];
    for (int i = 1; i < k; i++) out[i] = next_map[out[i - 1] - next_base];
}

/* A prompt of k tokens from A (k = prompt_len, or random in 2..MAXK when 0), its last token from
 * the domain's half of A. */
static int draw_prompt(uint32_t *p, Rng *rng, int prompt_len, SynthDomain domain) {
    if (prompt_len < 0 || prompt_len == 1 || prompt_len > MAXK)
        PAFT_FATAL("synthetic task: prompt length %d is not 0 or 2..%d", prompt_len, MAXK);
    int k = 2 + (int)(rng_u64(rng) % (MAXK - 1));
    if (prompt_len) k = prompt_len;
    for (int i = 0; i < k; i++) p[i] = (uint32_t)(A0 + rng_u64(rng) % NA);
    if (domain == SYNTH_SFT_DOMAIN) p[k - 1] = (uint32_t)(A0 + rng_u64(rng) % 10);
    if (domain == SYNTH_PREF_DOMAIN) p[k - 1] = (uint32_t)(A0 + 10 + rng_u64(rng) % (NA - 10));
    return k;
}

void synthetic_write_sft(const char *path, int n, uint64_t seed, uint64_t task_seed,
                         int prompt_len, SynthDomain domain) {
    Rules rules = make_rules(task_seed);
    Rng rng;
    rng_seed(&rng, seed);
    TokenDataWriter *w = token_data_writer_create(path, TOKEN_DATA_SFT, SYNTH_VOCAB);
    uint32_t p[MAXK], tokens[2 * MAXK + 3];
    uint8_t mask[2 * MAXK + 3];
    for (int r = 0; r < n; r++) {
        int k = draw_prompt(p, &rng, prompt_len, domain), len = 0;
        tokens[len] = BOS, mask[len++] = 0;
        for (int i = 0; i < k; i++) tokens[len] = p[i], mask[len++] = 0;
        tokens[len] = SEP, mask[len++] = 0;
        uint32_t a[MAXK];
        answer(a, p, k, rules.sigma, rules.tau, B0);
        for (int i = 0; i < k; i++) tokens[len] = a[i], mask[len++] = 1;
        tokens[len] = EOS, mask[len++] = 1;
        token_data_writer_add_sft(w, tokens, mask, (uint64_t)len);
    }
    token_data_writer_finish(w);
}

void synthetic_write_pref(const char *path, int n, uint64_t seed, uint64_t task_seed,
                          int prompt_len, SynthDomain domain) {
    Rules rules = make_rules(task_seed);
    Rng rng;
    rng_seed(&rng, seed);
    TokenDataWriter *w = token_data_writer_create(path, TOKEN_DATA_PREF, SYNTH_VOCAB);
    uint32_t p[MAXK], prompt[MAXK + 2], chosen[MAXK + 1], rejected[MAXK + 1];
    for (int r = 0; r < n; r++) {
        int k = draw_prompt(p, &rng, prompt_len, domain);
        prompt[0] = BOS;
        for (int i = 0; i < k; i++) prompt[1 + i] = p[i];
        answer(chosen, p, k, rules.sigma, rules.tau, B0);
        answer(rejected, p, k, rules.rho, rules.upsilon, C0);
        prompt[k + 1] = SEP;
        chosen[k] = rejected[k] = EOS;
        token_data_writer_add_pref(w, prompt, (uint64_t)k + 2, chosen, (uint64_t)k + 1, rejected,
                                   (uint64_t)k + 1);
    }
    token_data_writer_finish(w);
}
