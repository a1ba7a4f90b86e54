/*
 * make_regressions OUTDIR - the inputs of the fuzzing campaign's regression tests that are not
 * plain files (tests/fuzz/corpus-regressions/ holds those): HDF5 files, whose findings the
 * structure-aware harness fuzz_hdf5 reports as recipes rather than bytes, rebuilt here through
 * the HDF5 API as the harness built them.
 *
 *   merged_huge_config.h5   a merged model whose "config" attribute claims a 2^31-token vocabulary
 *                           and hidden size 2^30 over a 2 x 2 embedding: model_load allocated the
 *                           model the attribute describes before looking at any dataset
 *   adapter_huge_declared.h5  an adapter of a few KB whose A declares 2 x 2^30 values and stores
 *                           none: paft inspect allocated A (and the delta) at that shape
 *   tiny_sft.bin            token data for `paft eval` to get as far as loading the model
 *
 * Written without paft's writers (h5file.c), so that a writer cannot hide a reader's bug.
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/token_data.h"
#include "util/common.h"

static void put_string(hid_t file, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    CHECK_H5(type);
    CHECK_H5(H5Tset_size(type, strlen(value) + 1));
    hid_t space = H5Screate(H5S_SCALAR);
    CHECK_H5(space);
    hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(attr);
    CHECK_H5(H5Awrite(attr, type, value));
    CHECK_H5(H5Aclose(attr));
    CHECK_H5(H5Sclose(space));
    CHECK_H5(H5Tclose(type));
}

static void put_floats(hid_t file, const char *name, hsize_t rows, hsize_t cols) {
    hsize_t dims[2] = {rows, cols};
    hid_t space = H5Screate_simple(2, dims, NULL);
    CHECK_H5(space);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    CHECK_H5(lcpl);
    CHECK_H5(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t dset = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(dset);
    float *values = calloc(rows * cols, sizeof *values);
    if (!values) PAFT_FATAL("out of memory");
    CHECK_H5(H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values));
    free(values);
    CHECK_H5(H5Dclose(dset));
    CHECK_H5(H5Pclose(lcpl));
    CHECK_H5(H5Sclose(space));
}

static void put_number(hid_t file, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    CHECK_H5(space);
    hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_H5(attr);
    CHECK_H5(H5Awrite(attr, type, value));
    CHECK_H5(H5Aclose(attr));
    CHECK_H5(H5Sclose(space));
}

/* A dataset of that shape with nothing written: chunked, so the file stays a few KB. */
static void declare_floats(hid_t file, const char *name, hsize_t rows, hsize_t cols) {
    hsize_t dims[2] = {rows, cols}, chunk[2] = {rows < 16 ? rows : 16, 16};
    hid_t space = H5Screate_simple(2, dims, NULL);
    CHECK_H5(space);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    CHECK_H5(dcpl);
    CHECK_H5(H5Pset_chunk(dcpl, 2, chunk));
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    CHECK_H5(lcpl);
    CHECK_H5(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t dset = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT);
    CHECK_H5(dset);
    CHECK_H5(H5Dclose(dset));
    CHECK_H5(H5Pclose(lcpl));
    CHECK_H5(H5Pclose(dcpl));
    CHECK_H5(H5Sclose(space));
}

static char *path_in(const char *dir, const char *name) { return paft_path_join(dir, name); }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_regressions OUTDIR\n");
        return 2;
    }
    const char *dir = argv[1];
    paft_make_dirs(dir);

    char *path = path_in(dir, "merged_huge_config.h5");
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) PAFT_FATAL("%s: cannot create", path);
    put_string(file, "format", "paft-merged-1");
    put_string(file, "config",
               "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 2147483647, "
               "\"hidden_size\": 1073741824, \"intermediate_size\": 8, \"num_hidden_layers\": 1, "
               "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-05}");
    put_string(file, "dtype", "fp32");
    put_floats(file, "/weights/model.embed_tokens.weight", 2, 2);
    put_floats(file, "/weights/model.layers.0.input_layernorm.weight", 8, 1); /* looked for first */
    CHECK_H5(H5Fclose(file));
    free(path);

    path = path_in(dir, "adapter_huge_declared.h5");
    file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) PAFT_FATAL("%s: cannot create", path);
    put_string(file, "format", "paft-adapter-1");
    put_string(file, "stage", "sft");
    put_string(file, "targets", "q_proj");
    put_string(file, "base_fingerprint", "0000000000000007");
    put_string(file, "base_model", "random:llama");
    const int64_t step = 3, r = 2, rslora = 0;
    const double alpha = 4;
    put_number(file, "step", H5T_NATIVE_INT64, &step);
    put_number(file, "r", H5T_NATIVE_INT64, &r);
    put_number(file, "alpha", H5T_NATIVE_DOUBLE, &alpha);
    put_number(file, "rslora", H5T_NATIVE_INT64, &rslora);
    declare_floats(file, "/lora/model.layers.0.self_attn.q_proj/A", 2, (hsize_t)1 << 30);
    put_floats(file, "/lora/model.layers.0.self_attn.q_proj/B", 8, 2);
    CHECK_H5(H5Fclose(file));
    free(path);

    path = path_in(dir, "tiny_sft.bin");
    TokenDataWriter *w = token_data_writer_create(path, TOKEN_DATA_SFT, 8);
    const uint32_t tokens[3] = {1, 2, 3};
    const uint8_t mask[3] = {0, 1, 1};
    token_data_writer_add_sft(w, tokens, mask, 3);
    token_data_writer_finish(w);
    free(path);
    return 0;
}
