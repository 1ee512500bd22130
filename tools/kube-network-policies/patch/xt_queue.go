// Added to kube-network-policies' package networkpolicy at build time (tools/toolchain.py copies the
// module and adds this file): its nftables rules hand packets to userspace with the `queue` expression,
// which needs the kernel's nft_queue (CONFIG_NFT_QUEUE). Kernels built without it, as the project's
// machines are, still have xtables' NFQUEUE target, which nftables runs through nft_compat: the same
// queue, the same verdicts. controller.go's two `expr.Queue` stanzas become calls to xtQueue.
package networkpolicy

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

const nfqFlagBypass = 0x1 // NFQ_FLAG_BYPASS, linux/netfilter/xt_NFQUEUE.h

// xtQueue is `-j NFQUEUE --queue-num num [--queue-bypass]` as an nftables expression.
func xtQueue(num uint16, bypass bool) expr.Any {
	// struct xt_NFQ_info_v3 {__u16 queuenum; __u16 queues_total; __u16 flags;}, padded to 8 bytes
	// (XT_ALIGN): the size the kernel checks the target's data against.
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], nfqFlagBypass)
	}
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}
