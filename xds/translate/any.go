package translate

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// pack wraps m in an Any with a deterministic encoding. anypb.New does not
// order map entries, so the same configuration would hash to a different
// version on every build and Envoy would be sent (and would drain) an
// unchanged listener.
func pack(m proto.Message) (*anypb.Any, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("translate: pack %T: %w", m, err)
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, nil
}
