/* pressured: OOM kills seen from BPF (bcc).
 *
 * PK_KPROBE      kprobe on oom_kill_process(struct oom_control *oc, const char *message):
 *                the victim (oc->chosen), the cgroup that hit its limit (oc->memcg, NULL for
 *                a global OOM), the victim's own v2 cgroup and the kernfs names of that
 *                cgroup and its parent, read while the victim still exists, so its identity
 *                survives the victim being reaped; oc->totalpages, oc->chosen_points.
 * PK_TRACEPOINT  oom:mark_victim, once per task actually marked (the kprobe also fires when
 *                no kill follows). PK_MV_* say which fields this kernel's tracepoint has
 *                (only pid before 6.9/6.6); they come from the tracefs format file.
 *
 * Both feed one perf buffer, "events", with one struct pk_event per hit; pressured decodes
 * it with the layout in pressured/kills/readers/bcc.py (EVENT_LAYOUT): keep the two in step.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>
#include <linux/version.h>
#ifdef PK_KPROBE
#include <linux/oom.h>
#include <linux/memcontrol.h>
#include <linux/cgroup.h>
#include <linux/kernfs.h>
#endif

#define PK_NAME_LEN 128

#define PK_KIND_KPROBE 1
#define PK_KIND_MARK_VICTIM 2

#define PK_HAVE_COMM 1
#define PK_HAVE_RSS 2
#define PK_HAVE_UID 4
#define PK_HAVE_PGTABLES 8
#define PK_HAVE_ADJ 16
#define PK_HAVE_MEMCG 32
#define PK_HAVE_CGROUP 64

struct pk_event {
    u32 kind;
    u32 pid;
    u32 tgid;
    u32 uid;
    u64 memcg_id;
    u64 cgroup_id;
    u64 totalpages;
    s64 points;
    u64 total_vm;
    u64 anon_rss;
    u64 file_rss;
    u64 shmem_rss;
    u64 pgtables;
    s32 oom_score_adj;
    u32 have;
    char comm[TASK_COMM_LEN];
    char cgroup_name[PK_NAME_LEN];
    char parent_name[PK_NAME_LEN];
};

BPF_PERF_OUTPUT(events);
/* 368 bytes: built in a per-CPU slot, the BPF stack is only 512 */
BPF_PERCPU_ARRAY(scratch, struct pk_event, 1);

static __always_inline struct pk_event *pk_slot(void)
{
    int zero = 0;
    struct pk_event *e = scratch.lookup(&zero);
    if (e)
        __builtin_memset(e, 0, sizeof(*e));
    return e;
}

#ifdef PK_KPROBE
int pk_oom_kill_process(struct pt_regs *ctx, struct oom_control *oc, const char *message)
{
    struct pk_event *e = pk_slot();
    if (!e)
        return 0;
    struct task_struct *t = oc->chosen;
    e->kind = PK_KIND_KPROBE;
    e->pid = t->pid;
    e->tgid = t->tgid;
    bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), t->comm);
    e->have = PK_HAVE_COMM;
    e->totalpages = oc->totalpages;
    e->points = oc->chosen_points;
    struct mem_cgroup *memcg = oc->memcg;
    if (memcg) {
        e->memcg_id = memcg->css.cgroup->kn->id;
        e->have |= PK_HAVE_MEMCG;
    }
    struct kernfs_node *kn = t->cgroups->dfl_cgrp->kn;
    if (kn) {
        e->cgroup_id = kn->id;
        const char *name = kn->name;
        bpf_probe_read_kernel_str(e->cgroup_name, sizeof(e->cgroup_name), name);
        /* plain member accesses, not a macro: bcc rewrites the dereferences it can see
         * into probe reads, and it does not see into macro expansions. 6.15 made the
         * parent RCU-managed and renamed it __parent. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
        struct kernfs_node *parent = kn->__parent;
#else
        struct kernfs_node *parent = kn->parent;
#endif
        if (parent) {
            const char *pname = parent->name;
            bpf_probe_read_kernel_str(e->parent_name, sizeof(e->parent_name), pname);
        }
        e->have |= PK_HAVE_CGROUP;
    }
    events.perf_submit(ctx, e, sizeof(*e));
    return 0;
}
#endif

#ifdef PK_TRACEPOINT
TRACEPOINT_PROBE(oom, mark_victim)
{
    struct pk_event *e = pk_slot();
    if (!e)
        return 0;
    e->kind = PK_KIND_MARK_VICTIM;
    e->pid = args->pid;
#ifdef PK_MV_COMM
    TP_DATA_LOC_READ_CONST(e->comm, comm, TASK_COMM_LEN);
    e->have |= PK_HAVE_COMM;
#endif
#ifdef PK_MV_RSS
    e->total_vm = args->total_vm;
    e->anon_rss = args->anon_rss;
    e->file_rss = args->file_rss;
    e->shmem_rss = args->shmem_rss;
    e->have |= PK_HAVE_RSS;
#endif
#ifdef PK_MV_UID
    e->uid = args->uid;
    e->have |= PK_HAVE_UID;
#endif
#ifdef PK_MV_PGTABLES
    e->pgtables = args->pgtables;
    e->have |= PK_HAVE_PGTABLES;
#endif
#ifdef PK_MV_ADJ
    e->oom_score_adj = args->oom_score_adj;
    e->have |= PK_HAVE_ADJ;
#endif
    events.perf_submit(args, e, sizeof(*e));
    return 0;
}
#endif
