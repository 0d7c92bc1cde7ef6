/*
 * An example Spread sink plugin in C: appends one line per event to a file,
 * in the same format as the Rust example (../file-sink):
 *
 *     iteration \t timestamp \t id-hex \t kind \t origin \t topic \t payload-hex \n
 *
 * Settings (JSON): {"path": "events.txt"}, relative to the broker's data
 * directory unless absolute. (The settings parser below is deliberately
 * tiny: a string value without escapes.)
 *
 * Build:
 *     cc -shared -fPIC -O2 -Wall -I ../../abi/include -o libc_file_sink.so file_sink.c
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spread_plugin.h"

typedef struct {
    FILE *out;
} FileSink;

/* A message the host frees with free_error(). */
static char *error_message(const char *what, const char *detail) {
    size_t n = strlen(what) + strlen(detail) + 3;
    char *m = malloc(n);
    if (m != NULL) {
        snprintf(m, n, "%s: %s", what, detail);
    }
    return m;
}

static void free_error(char *error) { free(error); }

static void describe(SpreadInfo *info) {
    info->name = "example-c-file-sink";
    info->version = "0.1.0";
    info->capabilities = SPREAD_CAP_SINK;
}

/* The string value of "key" in a flat JSON object, malloc'ed, or NULL. */
static char *json_string(SpreadBytes json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    char *text = strndup((const char *)json.ptr, json.len);
    if (text == NULL) {
        return NULL;
    }
    char *value = NULL;
    char *at = strstr(text, pattern);
    if (at != NULL) {
        at = strchr(at + strlen(pattern), ':');
        at = at ? strchr(at, '"') : NULL;
        char *end = at ? strchr(at + 1, '"') : NULL;
        if (end != NULL) {
            value = strndup(at + 1, (size_t)(end - at - 1));
        }
    }
    free(text);
    return value;
}

static int32_t sink_open(const SpreadOpenArgs *args, void **instance, char **error) {
    char *path = json_string(args->config_json, "path");
    if (path == NULL) {
        *error = error_message("settings", "a \"path\" string is required");
        return SPREAD_FATAL;
    }
    char *full = path;
    if (path[0] != '/') {
        size_t n = args->data_dir.len + strlen(path) + 2;
        full = malloc(n);
        if (full == NULL) {
            free(path);
            *error = error_message("open", "out of memory");
            return SPREAD_FATAL;
        }
        snprintf(full, n, "%.*s/%s", (int)args->data_dir.len, (const char *)args->data_dir.ptr, path);
        free(path);
    }
    FILE *out = fopen(full, "a");
    if (out == NULL) {
        *error = error_message(full, strerror(errno));
        free(full);
        return SPREAD_FATAL;
    }
    free(full);
    FileSink *sink = malloc(sizeof *sink);
    if (sink == NULL) {
        fclose(out);
        *error = error_message("open", "out of memory");
        return SPREAD_FATAL;
    }
    sink->out = out;
    *instance = sink;
    return SPREAD_OK;
}

static void put_hex(FILE *out, const uint8_t *bytes, size_t len) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        fputc(digits[bytes[i] >> 4], out);
        fputc(digits[bytes[i] & 15], out);
    }
}

static int32_t sink_write(void *instance, const SpreadEvent *events, size_t count, char **error) {
    FileSink *sink = instance;
    for (size_t i = 0; i < count; i++) {
        const SpreadEvent *e = &events[i];
        fprintf(sink->out, "%llu\t%llu\t", (unsigned long long)e->iteration,
                (unsigned long long)e->timestamp);
        put_hex(sink->out, e->id, sizeof e->id);
        fprintf(sink->out, "\t%s\t%.*s\t%.*s\t",
                e->kind == SPREAD_KIND_TOMBSTONE ? "tombstone" : "value",
                (int)e->origin.len, (const char *)e->origin.ptr,
                (int)e->topic.len, (const char *)e->topic.ptr);
        put_hex(sink->out, e->payload.ptr, e->payload.len);
        fputc('\n', sink->out);
    }
    if (ferror(sink->out)) {
        clearerr(sink->out);
        *error = error_message("write", strerror(errno));
        return SPREAD_RETRY;
    }
    return SPREAD_OK;
}

static int32_t sink_flush(void *instance, char **error) {
    FileSink *sink = instance;
    if (fflush(sink->out) != 0 || fsync(fileno(sink->out)) != 0) {
        *error = error_message("flush", strerror(errno));
        return SPREAD_RETRY;
    }
    return SPREAD_OK;
}

static void sink_close(void *instance) {
    FileSink *sink = instance;
    fclose(sink->out);
    free(sink);
}

static const SpreadPlugin PLUGIN = {
    .abi_version = SPREAD_ABI_VERSION,
    .size = sizeof(SpreadPlugin),
    .describe = describe,
    .free_error = free_error,
    .sink_open = sink_open,
    .sink_write = sink_write,
    .sink_flush = sink_flush,
    .sink_missed = NULL,
    .sink_close = sink_close,
};

const SpreadPlugin *spread_plugin_entry(void) { return &PLUGIN; }
