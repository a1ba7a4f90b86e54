/* test_model_init_random.c - `paft bench`'s random base weights, filled by threads in pieces of
 * one random stream (rng_skipped), are the values one thread drawing that stream in order gives. */
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "model/model.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "util/rng.h"

int main(void) {
    /* rng_skipped(rng, n) continues the stream exactly n draws later */
    Rng start;
    rng_seed(&start, 12345);
    uint64_t drawn[1000];
    Rng walk = start;
    for (int i = 0; i < 1000; i++) drawn[i] = rng_u64(&walk);
    for (int n = 0; n < 1000; n += 111) {
        Rng skipped = rng_skipped(start, (uint64_t)n);
        CHECK(rng_u64(&skipped) == drawn[n], "rng_skipped(%d): another stream", n);
    }

    /* a model big enough for several pieces of 65,536 weights (about 280 k weights) */
    TinyModelSpec spec = tiny_model_default();
    spec.vocab_size = 1500;
    spec.hidden_size = 64;
    spec.intermediate_size = 128;
    tiny_model_write("init_random_model", &spec, 1);
    LoraConfig lora;
    lora_config_init(&lora, 2, 2, 0, "q_proj", "test");
    Model loaded;
    model_load(&loaded, "init_random_model", &lora, 1, MPI_COMM_SELF);
    CHECK(loaded.n_weights > 4 * ((size_t)1 << 16), "only %zu weights", loaded.n_weights);

    const double std = 0.02;
    const uint64_t seed = 7;
    omp_set_num_threads(3);
    Model m;
    model_init_random(&m, &loaded.config, &lora, seed, std);
    /* what one thread makes: the stream model.c documents, in order, norms moved to around 1 */
    real *expected = paft_malloc(m.n_weights * sizeof(real));
    Rng rng;
    rng_seed(&rng, seed ^ 0x5EEDULL);
    for (size_t i = 0; i < m.n_weights; i++) expected[i] = (real)(std * rng_normal(&rng));
    for (int v = 0; v < m.n_weight_views; v++) {
        const TensorView *tv = &m.weight_views[v];
        if (strstr(tv->name, "norm"))
            for (int64_t j = 0; j < tv->rows; j++) expected[tv->offset + j] += 1;
    }
    size_t differ = 0;
    for (size_t i = 0; i < m.n_weights; i++) differ += m.weights_memory[i] != expected[i];
    CHECK(differ == 0, "%zu of %zu weights differ from the single stream", differ, m.n_weights);
    free(expected);
    model_free(&m);
    model_free(&loaded);
    return test_finish("test_model_init_random");
}
