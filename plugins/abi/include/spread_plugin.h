/*
 * spread_plugin.h: the C ABI of Spread sink plugins, version 1.
 *
 * A plugin is a shared library exporting
 *
 *     const SpreadPlugin *spread_plugin_entry(void);
 *
 * which returns a table of functions that lives as long as the library.
 * The broker reads abi_version first and refuses any other version.
 * See docs/plugins.md for the lifecycle, threading and error rules.
 *
 * This header mirrors plugins/abi/src/ffi.rs; a test compiles it and checks
 * every size and offset against the Rust definitions.
 */
#ifndef SPREAD_PLUGIN_H
#define SPREAD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPREAD_ABI_VERSION 1u

/* Status codes returned by every fallible function. */
#define SPREAD_OK 0    /* success */
#define SPREAD_RETRY 1 /* failed, may succeed later: the host backs off and retries */
#define SPREAD_FATAL 2 /* failed for good: the host stops the sink */
/* sink_write only: the batch holds an event this sink can never store; the
 * host splits the batch, dead-letters each event rejected alone, and goes on. */
#define SPREAD_REJECTED 3

/* Capabilities reported by describe(). */
#define SPREAD_CAP_SINK 1u    /* sink_* functions are set */
#define SPREAD_CAP_ARCHIVE 2u /* archive_* and cursor_* functions are set */

/* Event kinds. */
#define SPREAD_KIND_VALUE 0u
#define SPREAD_KIND_TOMBSTONE 1u

/* A borrowed byte string, not NUL-terminated; ptr may be NULL when len is 0. */
typedef struct SpreadBytes {
    const uint8_t *ptr;
    size_t len;
} SpreadBytes;

/* A borrowed event, valid only during the call that passes it. */
typedef struct SpreadEvent {
    uint64_t iteration;  /* position in the log of the node that applied it */
    uint64_t timestamp;  /* microseconds since the Unix epoch */
    SpreadBytes topic;   /* UTF-8 */
    SpreadBytes payload; /* empty for a tombstone */
    SpreadBytes origin;  /* UTF-8: who published it */
    SpreadBytes node;    /* UTF-8: the node that applied it */
    uint8_t id[16];      /* globally unique: the key for exactly-once storage */
    uint8_t kind;        /* SPREAD_KIND_VALUE or SPREAD_KIND_TOMBSTONE */
    uint8_t reserved[7]; /* zero */
} SpreadEvent;

/* What an instance is opened with. */
typedef struct SpreadOpenArgs {
    SpreadBytes name;        /* the instance's name in the broker configuration */
    SpreadBytes config_json; /* the plugin's settings, a JSON object ("{}" when none) */
    SpreadBytes node;        /* the broker's node id */
    SpreadBytes data_dir;    /* the broker's data directory */
} SpreadOpenArgs;

/* An archive query. Unbounded: from_* = 0, to_* = UINT64_MAX, limit = 0. */
typedef struct SpreadQuery {
    const SpreadBytes *prefixes; /* whole-segment topic prefixes; none = all */
    size_t prefix_count;
    SpreadBytes node;        /* only this node's events; empty = any */
    uint64_t from_time;      /* inclusive, microseconds */
    uint64_t to_time;        /* exclusive */
    uint64_t from_iteration; /* inclusive */
    uint64_t to_iteration;   /* exclusive */
    uint64_t limit;          /* most events; 0 = no limit */
} SpreadQuery;

/* Filled by describe(); the strings are static and NUL-terminated. */
typedef struct SpreadInfo {
    const char *name;
    const char *version;
    uint32_t capabilities;
} SpreadInfo;

/*
 * Every fallible function returns a status; on failure it may set *error to
 * a NUL-terminated message the plugin allocated, which the host hands back
 * to free_error().
 */
typedef struct SpreadPlugin {
    uint32_t abi_version; /* SPREAD_ABI_VERSION; first in every version */
    uint32_t size;        /* sizeof(SpreadPlugin) as the plugin was built */

    void (*describe)(SpreadInfo *info);
    void (*free_error)(char *error);

    /* Sink: called from one thread per instance, never concurrently. */
    int32_t (*sink_open)(const SpreadOpenArgs *args, void **instance, char **error);
    int32_t (*sink_write)(void *instance, const SpreadEvent *events, size_t count, char **error);
    int32_t (*sink_flush)(void *instance, char **error);
    /* Optional: iterations first..=last were deleted before the sink got them. */
    int32_t (*sink_missed)(void *instance, uint64_t first, uint64_t last, char **error);
    void (*sink_close)(void *instance);

    /* Archive: archive_query may run on several threads at once; a cursor
     * is used by one thread at a time. Events returned by cursor_next stay
     * valid until the next call on that cursor; *count == 0 ends the query. */
    int32_t (*archive_open)(const SpreadOpenArgs *args, void **archive, char **error);
    int32_t (*archive_query)(void *archive, const SpreadQuery *query, void **cursor, char **error);
    int32_t (*cursor_next)(void *cursor, const SpreadEvent **events, size_t *count, char **error);
    void (*cursor_close)(void *cursor);
    void (*archive_close)(void *archive);
} SpreadPlugin;

/* The one symbol a plugin exports. */
const SpreadPlugin *spread_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* SPREAD_PLUGIN_H */
