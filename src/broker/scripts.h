/* The broker's Lua scripts, embedded at build time by tools/embed.c. */
#ifndef KILN_BROKER_SCRIPTS_H
#define KILN_BROKER_SCRIPTS_H

#include <stddef.h>

typedef struct kiln_embedded_script {
    const char *name;   /* file stem: "submit", "claim", ... */
    const char *source; /* the lib/ scripts followed by the operation's file */
    size_t length;
} kiln_embedded_script_t;

/* Terminated by an entry whose name is NULL. */
extern const kiln_embedded_script_t kiln_embedded_scripts[];

#endif
