/*
 * synthetic.h - generated tasks for the demo and the tests: small, learnable, and made so that
 * SFT and preference training pull on the same weights.
 *
 * Vocabulary layout (the tiny model's vocab must be >= SYNTH_VOCAB): 0 = BOS, 1 = "assistant:"
 * separator, 2 = EOS; prompts use tokens A = [3, 24), answers B = [24, 44), C = [44, 64).
 *   SFT record:   BOS p_1..p_k SEP a_1..a_k EOS     loss on the answer and EOS
 *                 a_1 = sigma(p_k), a_{j+1} = tau(a_j)   (the "good" answer, tokens from B)
 *   pref record:  prompt = BOS p_1..p_k SEP
 *                 chosen = a_1..a_k EOS                  (the SFT rule: shared with SFT)
 *                 rejected = b_1..b_k EOS, b_1 = rho(p_k), b_{j+1} = upsilon(b_j) (tokens from C)
 * sigma: A -> B, tau: B -> B, rho: A -> C, upsilon: C -> C are fixed maps drawn from `task_seed`;
 * k is 2..8. Each answer token follows from the token before it (the first from the last prompt
 * token, one position back over SEP), so a tiny model learns the rule in a few hundred steps, and
 * SFT and DPO both move the same next-token weights.
 *
 * Prompt domains: SYNTH_ALL draws prompt tokens from all of A; the demo gives SFT the prompts
 * ending in A_sft = [3, 13) and the preference data those ending in A_pref = [13, 24): the first
 * answer token (sigma of the last prompt token) is then a skill only one stage teaches, while the
 * chain tau is shared, so each stage alone is good at its own metric and merging the two deltas
 * is what gets both.
 */
#ifndef PAFT_SYNTHETIC_H
#define PAFT_SYNTHETIC_H

#include <stdint.h>

#define SYNTH_VOCAB 64

typedef enum { SYNTH_ALL = 0, SYNTH_SFT_DOMAIN = 1, SYNTH_PREF_DOMAIN = 2 } SynthDomain;

/* Write n SFT records / n preference records to PATH (token data format). Records are drawn
 * from `seed`; the rules sigma and rho from `task_seed` (same task_seed = same task). prompt_len
 * fixes k for every record (2..8; 0 = random per record): fixed-length data makes the padded
 * batch shapes, and so the communication volume, the same at every step. */
void synthetic_write_sft(const char *path, int n, uint64_t seed, uint64_t task_seed,
                         int prompt_len, SynthDomain domain);
void synthetic_write_pref(const char *path, int n, uint64_t seed, uint64_t task_seed,
                          int prompt_len, SynthDomain domain);

#endif
