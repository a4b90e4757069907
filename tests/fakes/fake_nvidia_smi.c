/*
 * fake_nvidia_smi: answers the one query kiln's GPU discovery makes
 * (src/agent/gpu_smi.c) the way nvidia-smi does with
 * --format=csv,noheader,nounits: one line per GPU,
 *   index, name, uuid, memory.total, memory.used, utilization.gpu, temperature.gpu
 * Any other arguments are refused with exit status 2, so a change to the
 * query shows up in the tests.
 *
 * Driven by the environment:
 *   FAKE_SMI_GPUS=N      N GPUs: "Fake SMI GPU i", uuid "GPU-smi-000i-...",
 *                        24576 MiB * (i + 1), 1024 MiB * i used, 10 * i %, 40 + i C
 *   FAKE_SMI_GARBAGE=1   malformed lines around and between the GPUs
 *   FAKE_SMI_ODD=1       one more GPU with a comma in its name and every
 *                        value "[N/A]" or "[Not Supported]"
 *   FAKE_SMI_FAIL=1      the message nvidia-smi prints without a driver, exit 9
 *   FAKE_SMI_HANG=1      print the first GPU, then wait forever
 *   FAKE_SMI_PID_FILE=P  write this process's pid to P first
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUERY  "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu"
#define FORMAT "--format=csv,noheader,nounits"

static int env_int(const char *name)
{
    const char *value = getenv(name);
    return value ? atoi(value) : 0;
}

static void print_gpu(int i, const char *eol)
{
    printf("%d, Fake SMI GPU %d, GPU-smi-%04d-0000-0000-000000000000, %d, %d, %d, %d%s", i, i, i,
           24576 * (i + 1), 1024 * i, 10 * i, 40 + i, eol);
}

static const char *const garbage_before[] = {
    "index, name, uuid, memory.total [MiB], memory.used [MiB], utilization.gpu [%], "
    "temperature.gpu\n",
    "garbage\n",
    "\n",
    "1, too, few\n",
    "x, Fake SMI GPU x, GPU-smi-x, 1, 2, 3, 4\n",
    "-1, Negative GPU, GPU-smi-neg, 1, 2, 3, 4\n",
};

static const char *const garbage_after[] = {
    "7, Bad Memory GPU, GPU-smi-bad, lots, 2, 3, 4\n",
    "8, Busy GPU, GPU-smi-busy, 1, 2, 300, 40\n",
    "9, Cold GPU, GPU-smi-cold, 1, 2, 3, cold\n",
    "0, Duplicate GPU, GPU-smi-dup, 1, 2, 3, 4\n",
    "10 Fake SMI GPU 10 GPU-smi-10 1 2 3 4", /* no commas and no final newline */
};

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], QUERY) != 0 || strcmp(argv[2], FORMAT) != 0) {
        fprintf(stderr, "fake_nvidia_smi: expected exactly %s %s\n", QUERY, FORMAT);
        return 2;
    }
    const char *pid_file = getenv("FAKE_SMI_PID_FILE");
    if (pid_file) {
        FILE *f = fopen(pid_file, "w");
        if (!f)
            return 3;
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    if (env_int("FAKE_SMI_FAIL")) {
        printf("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
               "Make sure that the latest NVIDIA driver is installed and running.\n");
        return 9;
    }
    int gpus = env_int("FAKE_SMI_GPUS");
    int garbage = env_int("FAKE_SMI_GARBAGE");
    if (env_int("FAKE_SMI_HANG")) {
        print_gpu(0, "\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (garbage) {
        for (size_t i = 0; i < sizeof garbage_before / sizeof garbage_before[0]; i++)
            fputs(garbage_before[i], stdout);
        char long_line[2048];
        memset(long_line, 'A', sizeof long_line - 2);
        long_line[sizeof long_line - 2] = '\n';
        long_line[sizeof long_line - 1] = '\0';
        fputs(long_line, stdout);
    }
    for (int i = 0; i < gpus; i++)
        print_gpu(i, garbage ? "\r\n" : "\n");
    if (env_int("FAKE_SMI_ODD"))
        printf("%d, Fake SMI GPU, with a comma, [N/A], [N/A], [N/A], [N/A], [Not Supported]\n",
               gpus);
    if (garbage) {
        for (size_t i = 0; i < sizeof garbage_after / sizeof garbage_after[0]; i++)
            fputs(garbage_after[i], stdout);
    }
    return 0;
}
