/*
 * exec_flood: never stops writing to stdout, so only a kill ends it.
 *
 *   exec_flood output   valid progress lines, without end
 *   exec_flood line     one line that never ends
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "output";
    char chunk[8192];
    if (strcmp(mode, "line") == 0) {
        memset(chunk, 'x', sizeof chunk);
    } else {
        size_t used = 0;
        while (used + 64 < sizeof chunk)
            used += (size_t)snprintf(chunk + used, sizeof chunk - used,
                                     "{\"progress\": 1, \"message\": \"flooding\"}\n");
        memset(chunk + used, ' ', sizeof chunk - used);
        chunk[sizeof chunk - 1] = '\n';
    }
    for (;;) {
        if (write(1, chunk, sizeof chunk) < 0)
            return 1;
    }
}
