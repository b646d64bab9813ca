/* layout.c — the C compiler's word on every shared struct's size and field
 * offsets, exported as a table so Python can prove its view (cffi's, built
 * from the same header) agrees. Every named field of every shared struct is
 * listed (tests/test_layout.py fails when one is missing); and this build's layout
 * stamp (SHM_LAYOUT_STAMP, shmlog.h). Owns nothing else. */
#include "shmlog.h"

#define F(type, field) {#type "." #field, offsetof(struct type, field), sizeof(((struct type *)0)->field)}
#define S(type) {#type, 0, sizeof(struct type)}

const struct shm_layout_field shm_layout_fields[] = {
    S(shm_frame_header), F(shm_frame_header, commit), F(shm_frame_header, length),
    F(shm_frame_header, kind), F(shm_frame_header, flags),
    S(shm_gap_body), F(shm_gap_body, base_offset), F(shm_gap_body, count),
    S(shm_producer_slot), F(shm_producer_slot, owner), F(shm_producer_slot, state),
    F(shm_producer_slot, pid), F(shm_producer_slot, start_time), F(shm_producer_slot, res_pos),
    F(shm_producer_slot, frame_pos), F(shm_producer_slot, res_end),
    F(shm_producer_slot, base_offset), F(shm_producer_slot, count), F(shm_producer_slot, res_ms),
    S(shm_reader_slot), F(shm_reader_slot, owner), F(shm_reader_slot, pid), F(shm_reader_slot, start_time),
    F(shm_reader_slot, pos), F(shm_reader_slot, claimed_ms),
    S(shm_ring_header), F(shm_ring_header, magic), F(shm_ring_header, version),
    F(shm_ring_header, header_bytes), F(shm_ring_header, capacity), F(shm_ring_header, total_bytes),
    F(shm_ring_header, topic_generation), F(shm_ring_header, partition),
    F(shm_ring_header, persistence), F(shm_ring_header, max_frame_bytes),
    F(shm_ring_header, deleted), F(shm_ring_header, created_ms), F(shm_ring_header, base_offset),
    F(shm_ring_header, base_position), F(shm_ring_header, offline), F(shm_ring_header, offline_pos),
    F(shm_ring_header, offline_offset), F(shm_ring_header, tail_pos),
    F(shm_ring_header, tail_offset), F(shm_ring_header, head_pos), F(shm_ring_header, head_offset),
    F(shm_ring_header, persisted_pos), F(shm_ring_header, fsynced_pos),
    F(shm_ring_header, persist_errno), F(shm_ring_header, data_waiters),
    F(shm_ring_header, data_seq), F(shm_ring_header, space_waiters), F(shm_ring_header, space_seq),
    F(shm_ring_header, persist_waiters), F(shm_ring_header, persist_seq),
    F(shm_ring_header, durable_waiters), F(shm_ring_header, durable_seq),
    F(shm_ring_header, sealed_count), F(shm_ring_header, overwritten_frames),
    F(shm_ring_header, seal_lock), F(shm_ring_header, overflow), F(shm_ring_header, reader_hi),
    F(shm_ring_header, committed_bytes), F(shm_ring_header, txn_bound),
    F(shm_ring_header, blocked_ns), F(shm_ring_header, blocked_waits), F(shm_ring_header, readers_freed), F(shm_ring_header, txn_aborts),
    F(shm_ring_header, slots), F(shm_ring_header, readers),
    S(shm_topic_config), F(shm_topic_config, partitions), F(shm_topic_config, persistence),
    F(shm_topic_config, ring_bytes), F(shm_topic_config, max_message_bytes),
    F(shm_topic_config, fsync_mode), F(shm_topic_config, fsync_interval_ms),
    F(shm_topic_config, retention_ms), F(shm_topic_config, retention_bytes),
    F(shm_topic_config, segment_bytes), F(shm_topic_config, segment_ms), F(shm_topic_config, overflow),
    F(shm_topic_config, cleanup_policy), F(shm_topic_config, delete_retention_ms),
    F(shm_topic_config, min_compaction_lag_ms),
    S(shm_topic_entry), F(shm_topic_entry, state), F(shm_topic_entry, name_len),
    F(shm_topic_entry, generation), F(shm_topic_entry, name), F(shm_topic_entry, config),
    F(shm_topic_entry, created_ms), F(shm_topic_entry, topic_id),
    S(shm_ctl_header), F(shm_ctl_header, magic), F(shm_ctl_header, version),
    F(shm_ctl_header, header_bytes), F(shm_ctl_header, total_bytes), F(shm_ctl_header, max_topics),
    F(shm_ctl_header, created_ms), F(shm_ctl_header, topics_off), F(shm_ctl_header, lock),
    F(shm_ctl_header, topics_epoch), F(shm_ctl_header, next_generation), F(shm_ctl_header, restored),
    F(shm_ctl_header, max_groups), F(shm_ctl_header, max_members), F(shm_ctl_header, max_offsets),
    F(shm_ctl_header, groups_off), F(shm_ctl_header, members_off), F(shm_ctl_header, offsets_off),
    F(shm_ctl_header, next_member_token), F(shm_ctl_header, commit_seq),
    F(shm_ctl_header, data_dir_dev), F(shm_ctl_header, data_dir_ino), F(shm_ctl_header, data_dir_len),
    F(shm_ctl_header, data_dir),
    S(shm_group_entry), F(shm_group_entry, state), F(shm_group_entry, name_len),
    F(shm_group_entry, change_seq), F(shm_group_entry, generation), F(shm_group_entry, rebalances),
    F(shm_group_entry, assignor), F(shm_group_entry, dirty), F(shm_group_entry, created_ms),
    F(shm_group_entry, rebalanced_ms), F(shm_group_entry, name),
    S(shm_member_topic), F(shm_member_topic, index), F(shm_member_topic, partitions),
    F(shm_member_topic, generation),
    S(shm_member_entry), F(shm_member_entry, state), F(shm_member_entry, group),
    F(shm_member_entry, token), F(shm_member_entry, pid), F(shm_member_entry, flags),
    F(shm_member_entry, start_time), F(shm_member_entry, heartbeat_ms), F(shm_member_entry, polled_ms),
    F(shm_member_entry, joined_ms), F(shm_member_entry, session_timeout_ms),
    F(shm_member_entry, max_poll_interval_ms), F(shm_member_entry, assignor), F(shm_member_entry, n_topics),
    F(shm_member_entry, member_id_len), F(shm_member_entry, instance_id_len),
    F(shm_member_entry, member_id), F(shm_member_entry, instance_id), F(shm_member_entry, client_id),
    F(shm_member_entry, topics),
    S(shm_offset_entry), F(shm_offset_entry, state), F(shm_offset_entry, group),
    F(shm_offset_entry, topic), F(shm_offset_entry, partition), F(shm_offset_entry, topic_generation),
    F(shm_offset_entry, pending), F(shm_offset_entry, committed), F(shm_offset_entry, owner),
    F(shm_offset_entry, commit_ms), F(shm_offset_entry, commits),
};
const uint32_t shm_layout_field_count = sizeof shm_layout_fields / sizeof shm_layout_fields[0];

uint32_t shm_layout_stamp(void) { return SHM_LAYOUT_STAMP; }
