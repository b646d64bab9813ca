/* layout.c — the C compiler's word on every shared struct's size and field
 * offsets, exported as a table so Python can prove its view (cffi's, built
 * from the same header) agrees. Every named field of every shared struct is
 * listed (tests/test_layout.py fails when one is missing). Owns nothing else. */
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
    F(shm_producer_slot, base_offset), F(shm_producer_slot, count),
    S(shm_ring_header), F(shm_ring_header, magic), F(shm_ring_header, version),
    F(shm_ring_header, header_bytes), F(shm_ring_header, capacity), F(shm_ring_header, total_bytes),
    F(shm_ring_header, topic_generation), F(shm_ring_header, partition),
    F(shm_ring_header, persistence), F(shm_ring_header, max_frame_bytes),
    F(shm_ring_header, deleted), F(shm_ring_header, created_ms), F(shm_ring_header, base_offset),
    F(shm_ring_header, base_position), F(shm_ring_header, tail_pos),
    F(shm_ring_header, tail_offset), F(shm_ring_header, head_pos), F(shm_ring_header, head_offset),
    F(shm_ring_header, persisted_pos), F(shm_ring_header, fsynced_pos),
    F(shm_ring_header, persist_errno), F(shm_ring_header, data_waiters),
    F(shm_ring_header, data_seq), F(shm_ring_header, space_waiters), F(shm_ring_header, space_seq),
    F(shm_ring_header, persist_waiters), F(shm_ring_header, persist_seq),
    F(shm_ring_header, durable_waiters), F(shm_ring_header, durable_seq),
    F(shm_ring_header, sealed_count), F(shm_ring_header, overwritten_frames),
    F(shm_ring_header, seal_lock), F(shm_ring_header, slots),
    S(shm_topic_config), F(shm_topic_config, partitions), F(shm_topic_config, persistence),
    F(shm_topic_config, ring_bytes), F(shm_topic_config, max_message_bytes),
    F(shm_topic_config, fsync_mode), F(shm_topic_config, fsync_interval_ms),
    F(shm_topic_config, retention_ms), F(shm_topic_config, retention_bytes),
    F(shm_topic_config, segment_bytes), F(shm_topic_config, segment_ms),
    S(shm_topic_entry), F(shm_topic_entry, state), F(shm_topic_entry, name_len),
    F(shm_topic_entry, generation), F(shm_topic_entry, name), F(shm_topic_entry, config),
    F(shm_topic_entry, created_ms),
    S(shm_ctl_header), F(shm_ctl_header, magic), F(shm_ctl_header, version),
    F(shm_ctl_header, header_bytes), F(shm_ctl_header, total_bytes), F(shm_ctl_header, max_topics),
    F(shm_ctl_header, created_ms), F(shm_ctl_header, topics_off), F(shm_ctl_header, lock),
    F(shm_ctl_header, topics_epoch), F(shm_ctl_header, next_generation), F(shm_ctl_header, restored),
};
const uint32_t shm_layout_field_count = sizeof shm_layout_fields / sizeof shm_layout_fields[0];
