// Command formats writes tests/data/formats: a set of traces encoded by the
// OpenTelemetry Collector's own translators in every encoding its kafka exporter
// writes (otlp_proto, otlp_json, jaeger_proto, jaeger_json, zipkin_json,
// zipkin_proto), and, per encoding, what the Collector's receiver-side translator
// decodes them back to (expected_<encoding>.json, OTLP/JSON). tailsift's decoders are
// tested against those: they must read what the Collector reads.
//
// Run from the repository root: scripts/testdata/formats/generate.sh
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gogo/protobuf/jsonpb"
	jaegermodel "github.com/jaegertracing/jaeger-idl/model/v1"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/translator/jaeger"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/translator/zipkin/zipkinv2"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

const base = 1_700_000_000_000_000_000 // ns since the epoch

func id16(b byte) pcommon.TraceID {
	var t [16]byte
	for i := range t {
		t[i] = b + byte(i)
	}
	return t
}

func id8(trace, span byte) pcommon.SpanID {
	return pcommon.SpanID{trace, span, 0, 0, 0, 0, 0, 1}
}

// traces: two services (resources), scopes with versions, every span kind, the
// three status codes (one with a message), string/int/bool/double attributes,
// events, a link, a trace state, parents.
func traces() ptrace.Traces {
	td := ptrace.NewTraces()
	for r, svc := range []string{"checkout", "payments"} {
		rs := td.ResourceSpans().AppendEmpty()
		rs.Resource().Attributes().PutStr("service.name", svc)
		rs.Resource().Attributes().PutStr("host.name", fmt.Sprintf("node-%d", r))
		rs.Resource().Attributes().PutInt("process.pid", int64(1000+r))
		ss := rs.ScopeSpans().AppendEmpty()
		ss.Scope().SetName("io.opentelemetry." + svc)
		ss.Scope().SetVersion("1.2.3")
		for t := byte(1); t <= 4; t++ {
			s := ss.Spans().AppendEmpty()
			s.SetTraceID(id16(t * 16))
			s.SetSpanID(id8(t, byte(r+1)))
			if r == 1 {
				s.SetParentSpanID(id8(t, 1))
			}
			s.SetName(fmt.Sprintf("%s op %d", svc, t))
			start := uint64(base) + uint64(t)*1_000_000_000 + uint64(r)*1_000_000
			s.SetStartTimestamp(pcommon.Timestamp(start))
			s.SetEndTimestamp(pcommon.Timestamp(start + uint64(t)*250_000_000 + 123_456))
			s.SetKind([]ptrace.SpanKind{ptrace.SpanKindServer, ptrace.SpanKindClient, ptrace.SpanKindProducer, ptrace.SpanKindConsumer, ptrace.SpanKindInternal}[(int(t)+r)%5])
			switch (int(t) + r) % 3 {
			case 0:
				s.Status().SetCode(ptrace.StatusCodeError)
				s.Status().SetMessage("upstream timed out")
			case 1:
				s.Status().SetCode(ptrace.StatusCodeOk)
			}
			a := s.Attributes()
			a.PutStr("http.route", fmt.Sprintf("/api/%s/%d", svc, t))
			a.PutInt("retries", int64(t))
			a.PutBool("cache.hit", t%2 == 0)
			a.PutDouble("ratio", float64(t)/4)
			if t == 2 {
				s.TraceState().FromRaw("rojo=00f067aa0ba902b7")
				e := s.Events().AppendEmpty()
				e.SetName("exception")
				e.SetTimestamp(pcommon.Timestamp(start + 1000))
				e.Attributes().PutStr("exception.message", "boom")
			}
			if t == 3 && r == 0 {
				l := s.Links().AppendEmpty()
				l.SetTraceID(id16(0xa0))
				l.SetSpanID(id8(0xa0, 9))
			}
		}
	}
	return td
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func write(dir, name string, data []byte) {
	must(os.WriteFile(filepath.Join(dir, name), data, 0o644))
}

// lengthPrefixed: 4-byte big-endian length, then the record, for each record.
func lengthPrefixed(records [][]byte) []byte {
	var out bytes.Buffer
	for _, r := range records {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(r)))
		out.Write(n[:])
		out.Write(r)
	}
	return out.Bytes()
}

func expected(dir, enc string, td ptrace.Traces) {
	j, err := (&ptrace.JSONMarshaler{}).MarshalTraces(td)
	must(err)
	write(dir, "expected_"+enc+".json", append(j, '\n'))
}

func main() {
	dir := os.Args[1]
	td := traces()

	pb, err := (&ptrace.ProtoMarshaler{}).MarshalTraces(td)
	must(err)
	write(dir, "otlp_proto.bin", pb)
	expected(dir, "otlp_proto", td)
	js, err := (&ptrace.JSONMarshaler{}).MarshalTraces(td)
	must(err)
	write(dir, "otlp_json.json", js)
	expected(dir, "otlp_json", td)

	// Jaeger: one span per message, keyed by its trace id, as the kafka exporter.
	var protos, jsons, keys [][]byte
	var spans []*jaegermodel.Span
	for _, batch := range jaeger.ProtoFromTraces(td) {
		for _, span := range batch.Spans {
			span.Process = batch.Process
			spans = append(spans, span)
			b, err := span.Marshal()
			must(err)
			protos = append(protos, b)
			var out bytes.Buffer
			must((&jsonpb.Marshaler{}).Marshal(&out, span))
			jsons = append(jsons, out.Bytes())
			keys = append(keys, []byte(span.TraceID.String()))
		}
	}
	write(dir, "jaeger_proto.bin", lengthPrefixed(protos))
	write(dir, "jaeger_json.bin", lengthPrefixed(jsons))
	write(dir, "jaeger_keys.txt", append(bytes.Join(keys, []byte("\n")), '\n'))
	// The receiver's side: each message is one span, read as a batch of one.
	back := ptrace.NewTraces()
	for _, span := range spans {
		one, err := jaeger.ProtoToTraces([]*jaegermodel.Batch{{Spans: []*jaegermodel.Span{span}, Process: span.Process}})
		must(err)
		one.ResourceSpans().MoveAndAppendTo(back.ResourceSpans())
	}
	expected(dir, "jaeger_proto", back)
	expected(dir, "jaeger_json", back)

	// Zipkin: the whole batch in one message, unkeyed.
	for _, z := range []struct {
		enc string
		m   ptrace.Marshaler
		u   ptrace.Unmarshaler
	}{
		{"zipkin_json", zipkinv2.NewJSONTracesMarshaler(), zipkinv2.NewJSONTracesUnmarshaler(false)},
		{"zipkin_proto", zipkinv2.NewProtobufTracesMarshaler(), zipkinv2.NewProtobufTracesUnmarshaler(false, false)},
	} {
		b, err := z.m.MarshalTraces(td)
		must(err)
		write(dir, z.enc+".bin", b)
		back, err := z.u.UnmarshalTraces(b)
		must(err)
		expected(dir, z.enc, back)
	}
}
