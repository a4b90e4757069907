/*
 * exec_garbage: mixes lines the protocol must ignore (not JSON, broken
 * JSON, JSON that is not an object, objects without a known field,
 * invalid UTF-8, blank lines) with valid progress and result lines.
 */
#include <stdio.h>

int main(void)
{
    char line[4096];
    while (fgets(line, sizeof line, stdin))
        ;
    static const char *const lines[] = {
        "hello, this is not JSON\n",
        "{\"progress\": 10, \"message\": \"valid\"}\n",
        "{broken json\n",
        "[1, 2, 3]\n",
        "\"a string\"\n",
        "{\"unrelated\": true}\n",
        "\xff\xfe\x01 invalid utf-8\n",
        "\n",
        "\r\n",
        "{\"progress\": 50}\n",
        "  {\"progress\": 75, \"message\": \"padded\"}  \r\n",
        "{\"result\": {\"ok\": true}}\n",
        "trailing words after the result\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        fputs(lines[i], stdout);
    return 0;
}
