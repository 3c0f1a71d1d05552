/* hbridge from C: load a model, stream a chat answer, generate an image into a caller-owned buffer,
 * and show how errors and cancellation come back.
 *
 *   cc examples/c/hbridge_demo.c -Iinclude -Ltarget/release -lhbridge -Wl,-rpath,$PWD/target/release
 *   ./a.out MODEL_DIR [OUT.rgb]
 *
 * Prints "token <id>" per answer token and "image <w>x<h> <checksum>"; writes the raw RGB bytes to
 * OUT.rgb when given. Exits 0 when every step behaved as expected. tests/c_api.rs builds and runs it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hbridge.h"

static int on_token(void *user_data, uint32_t token, const char *piece, size_t piece_len) {
    (void)piece;
    (void)piece_len;
    int *count = (int *)user_data;
    *count += 1;
    printf("token %u\n", token);
    return 0; /* 0 = go on; nonzero stops the answer here */
}

static int on_progress(void *user_data, uint32_t step, uint32_t steps) {
    uint32_t cancel_after = *(uint32_t *)user_data;
    fprintf(stderr, "step %u/%u\n", step, steps);
    return cancel_after != 0 && step >= cancel_after; /* nonzero cancels */
}

#define CHECK(call, want)                                                                        \
    do {                                                                                         \
        HbridgeStatus got_ = (call);                                                             \
        if (got_ != (want)) {                                                                    \
            fprintf(stderr, "%s: status %d, expected %d: %s\n", #call, (int)got_, (int)(want),  \
                    hbridge_last_error());                                                       \
            return 1;                                                                            \
        }                                                                                        \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [OUT.rgb]\n", argv[0]);
        return 2;
    }
    printf("hbridge %s\n", hbridge_version());

    HbridgeEngineOptions engine_options;
    hbridge_engine_options_default(&engine_options);
    engine_options.device = HBRIDGE_DEVICE_CPU;
    HbridgeEngine *engine = NULL;
    CHECK(hbridge_engine_create(argv[1], &engine_options, &engine), HBRIDGE_STATUS_OK);

    /* Weights resident before the first request (a latency-sensitive program does this at start-up). */
    double warm_ms = -1.0;
    CHECK(hbridge_engine_warm_up(engine, 1, 1, &warm_ms), HBRIDGE_STATUS_OK);
    printf("warm-up %s\n", warm_ms >= 0.0 ? "done" : "took no time");

    /* Chat: greedy, 8 tokens, streamed through the callback. */
    HbridgeChatOptions chat_options;
    hbridge_chat_options_default(&chat_options);
    chat_options.max_tokens = 8;
    int streamed = 0;
    uint32_t answered = 0;
    CHECK(hbridge_chat(engine, "What is a bridge?", &chat_options, on_token, &streamed, &answered),
          HBRIDGE_STATUS_OK);
    if ((uint32_t)streamed != answered) {
        fprintf(stderr, "streamed %d tokens, answer has %u\n", streamed, answered);
        return 1;
    }

    /* A conversation: the session keeps its K/V cache, so the second turn prefills only itself. */
    HbridgeChatSession *session = NULL;
    CHECK(hbridge_chat_session_create(NULL, &session), HBRIDGE_STATUS_OK);
    uint32_t turn_tokens[2] = {0, 0};
    CHECK(hbridge_chat_session_send(engine, session, "What is a bridge?", NULL, 0, &chat_options, NULL,
                                    NULL, &turn_tokens[0]),
          HBRIDGE_STATUS_OK);
    CHECK(hbridge_chat_session_send(engine, session, "And a tunnel?", NULL, 0, &chat_options, NULL,
                                    NULL, &turn_tokens[1]),
          HBRIDGE_STATUS_OK);
    printf("session answers %u %u\n", turn_tokens[0], turn_tokens[1]);
    hbridge_chat_session_destroy(session);

    /* An image into our own buffer. */
    HbridgeImageOptions image_options;
    hbridge_image_options_default(&image_options);
    image_options.width = 32;
    image_options.height = 32;
    image_options.steps = 2;
    image_options.seed = 7;
    size_t len = (size_t)image_options.width * image_options.height * 3;
    uint8_t *rgb = malloc(len);
    uint32_t no_cancel = 0;
    CHECK(hbridge_generate_image(engine, "a red cube", NULL, &image_options, on_progress, &no_cancel,
                                 rgb, len),
          HBRIDGE_STATUS_OK);
    unsigned long sum = 0;
    for (size_t i = 0; i < len; i++) sum += rgb[i];
    printf("image %ux%u %lu\n", image_options.width, image_options.height, sum);
    if (argc > 2) {
        FILE *f = fopen(argv[2], "wb");
        if (!f || fwrite(rgb, 1, len, f) != len) {
            fprintf(stderr, "%s: cannot write\n", argv[2]);
            return 1;
        }
        fclose(f);
    }

    /* Errors come back as codes with a message; the engine stays usable. */
    CHECK(hbridge_generate_image(engine, "a red cube", NULL, &image_options, NULL, NULL, rgb, len - 1),
          HBRIDGE_STATUS_BUFFER_TOO_SMALL);
    printf("error %s\n", hbridge_last_error());
    image_options.width = 33;
    CHECK(hbridge_generate_image(engine, "a red cube", NULL, &image_options, NULL, NULL, rgb, 33 * 32 * 3),
          HBRIDGE_STATUS_INVALID_ARGUMENT);
    printf("error %s\n", hbridge_last_error());
    image_options.width = 32;
    uint32_t cancel_after = 1;
    CHECK(hbridge_generate_image(engine, "a red cube", NULL, &image_options, on_progress, &cancel_after,
                                 rgb, len),
          HBRIDGE_STATUS_CANCELLED);
    printf("error %s\n", hbridge_last_error());
    CHECK(hbridge_chat(engine, NULL, &chat_options, NULL, NULL, NULL), HBRIDGE_STATUS_INVALID_ARGUMENT);
    printf("error %s\n", hbridge_last_error());

    free(rgb);
    hbridge_engine_destroy(engine);
    printf("ok\n");
    return 0;
}
