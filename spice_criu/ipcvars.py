# SPDX-License-Identifier: MIT
"""The sysctls of an ipc namespace that ipcns-var-<id>.img records (ipc_var_entry), listed once for
dump/ipcns.py and restore/ipcns.py, in the order CRIU's ipc_sysctl_req reads and writes them."""

from __future__ import annotations

#: (ipc_var_entry field, sysctl under /proc/sys); the first nine are mandatory, the mqueue ones
#: exist when the kernel has POSIX message queues, the *_next_id ones are recorded only when set
SYSCTLS = (
    ("sem_ctls", "kernel/sem"),
    ("msg_ctlmax", "kernel/msgmax"),
    ("msg_ctlmnb", "kernel/msgmnb"),
    ("auto_msgmni", "kernel/auto_msgmni"),
    ("msg_ctlmni", "kernel/msgmni"),
    ("shm_ctlmax", "kernel/shmmax"),
    ("shm_ctlall", "kernel/shmall"),
    ("shm_ctlmni", "kernel/shmmni"),
    ("shm_rmid_forced", "kernel/shm_rmid_forced"),
    ("mq_queues_max", "fs/mqueue/queues_max"),
    ("mq_msg_max", "fs/mqueue/msg_max"),
    ("mq_msgsize_max", "fs/mqueue/msgsize_max"),
    ("mq_msg_default", "fs/mqueue/msg_default"),
    ("mq_msgsize_default", "fs/mqueue/msgsize_default"),
    ("msg_next_id", "kernel/msg_next_id"),
    ("sem_next_id", "kernel/sem_next_id"),
    ("shm_next_id", "kernel/shm_next_id"),
)
#: -1 until set, and -1 cannot be written back: recorded only when set
NEXT_IDS = ("msg_next_id", "sem_next_id", "shm_next_id")
