package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/models"
	"github.com/edgefleet/edgefleet/internal/infer"
	"github.com/edgefleet/edgefleet/internal/onnxmodel"
	"github.com/edgefleet/edgefleet/internal/tensor"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

func (a *app) modelInspectCmd() *cobra.Command {
	var lib string
	c := &cobra.Command{
		Use:   "inspect FILE",
		Short: "show a model's inputs and outputs and what pushing it needs",
		Long: `Reads an ONNX model and shows what it declares (producer, IR version, opsets, size) and
each input and output: its ONNX type, its shape (dynamic dimensions by name, ? when unnamed)
and what edgefleet serves it as over the Open Inference Protocol, or why it cannot.

Then it says what "edgefleet model push" would need: nothing more when the model runs on
synthetic inputs made from its schema (tried here when onnxruntime is found), else
--sample-inputs FILE. It runs offline: no control plane is asked.`,
		Example: `  edgefleet model inspect model.onnx
  edgefleet model inspect classifier.onnx --onnxruntime /opt/lib/libonnxruntime.so.1`,
		Args: oneArg("model file"),
		RunE: a.runE(func(_ *cobra.Command, pos []string) error {
			data, err := os.ReadFile(pos[0])
			if err != nil {
				return err
			}
			return inspectModel(a.stdout, pos[0], data, lib)
		}),
	}
	c.Flags().StringVar(&lib, "onnxruntime", "", "onnxruntime shared library `FILE` to try synthetic inputs with (default: the usual places; none found skips the try)")
	return c
}

// inspectModel writes what inspect shows.
func inspectModel(w io.Writer, path string, data []byte, lib string) error {
	m, err := onnxmodel.Read(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	sum := sha256.Sum256(data)
	fmt.Fprintf(w, "%s: %d bytes, sha256 %s\n", path, len(data), hex.EncodeToString(sum[:]))
	producer := strings.TrimSpace(m.ProducerName + " " + m.ProducerVersion)
	if producer == "" {
		producer = "unknown"
	}
	var opsets []string
	for _, o := range m.Opsets {
		d := o.Domain
		if d == "" {
			d = "ai.onnx"
		}
		opsets = append(opsets, fmt.Sprintf("%s %d", d, o.Version))
	}
	fmt.Fprintf(w, "producer %s, IR version %d, opsets %s\n", producer, m.IRVersion, strings.Join(opsets, ", "))
	fmt.Fprintf(w, "graph %q: %d nodes, %d initializers\n", m.GraphName, m.Nodes, m.Initializers)

	d := infer.DescribeModel(m)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, set := range []struct {
		title string
		vals  []infer.ValueDescription
	}{{"INPUTS", d.Inputs}, {"OUTPUTS", d.Outputs}} {
		fmt.Fprintf(tw, "\n%s\tONNX TYPE\tSHAPE\tSERVED AS\n", set.title)
		for _, v := range set.vals {
			shape := v.Shape
			if shape == "" {
				shape = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", v.Name, v.Type, shape, servedAs(v))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := d.Err(); err != nil {
		fmt.Fprintf(w, "push would be refused: %s\n", strings.TrimPrefix(err.Error(), infer.ErrUnsupported.Error()+": "))
		return nil
	}
	ins, outs := d.Specs()
	if label, score := models.ClassifierOutputs(outs); label != "" {
		fmt.Fprintf(w, "monitoring: a classifier; accuracy compares ground truth with %q, scores from %q\n", label, score)
	} else {
		fmt.Fprintf(w, "monitoring: %q is read as a probability (one value per row) or a score per class\n", outs[0].Name)
	}
	var numeric, other []string
	for _, in := range ins {
		if tensor.Datatype(in.Datatype).IsNumeric() {
			numeric = append(numeric, in.Name)
		} else {
			other = append(other, in.Name)
		}
	}
	if len(other) > 0 {
		fmt.Fprintf(w, "drift: numeric inputs only; %s not monitored\n", strings.Join(other, ", "))
	}
	fmt.Fprintf(w, "push needs: %s\n", pushNeeds(data, ins, outs, lib))
	if len(ins) == 1 && len(numeric) == 1 && len(ins[0].Shape) > 0 && len(ins[0].Shape) <= 2 {
		fmt.Fprintf(w, "  --sample-inputs and --reference-data may be CSV files (one row per sample, %s)\n", csvColumns(ins[0]))
	} else {
		fmt.Fprintln(w, "  --sample-inputs takes an OIP inference request JSON (or a JSON array of them)")
	}
	return nil
}

func csvColumns(in *efpb.TensorSpec) string {
	if len(in.Shape) == 2 && in.Shape[1] > 0 {
		return fmt.Sprintf("%d numeric columns", in.Shape[1])
	}
	if len(in.Shape) == 1 {
		return "1 numeric column"
	}
	return "numeric columns"
}

// servedAs says what a value is served as, or why it is not.
func servedAs(v infer.ValueDescription) string {
	if v.Problem != nil {
		return "NOT SERVED: " + strings.TrimPrefix(v.Problem.Error(), infer.ErrUnsupported.Error()+": ")
	}
	s := fmt.Sprintf("%s %s", v.Spec.Datatype, tensor.FormatShape(v.Spec.Shape))
	if v.Spec.Shape == nil {
		s = v.Spec.Datatype + " (any shape)"
	}
	if v.Spec.Kind == efpb.TensorKind_TENSOR_KIND_CLASS_MAP {
		s += ", class map"
		if c, err := tensor.FromProto(v.Spec.Classes); err == nil {
			labels := make([]string, c.Len())
			for i := range labels {
				labels[i] = c.Format(i)
			}
			s += " of classes " + strings.Join(labels, ", ")
		}
	}
	return s
}

// pushNeeds tries the model on synthetic inputs with onnxruntime, when
// it is found, and says what a push needs.
func pushNeeds(data []byte, ins, outs []*efpb.TensorSpec, lib string) string {
	const withSamples = "--sample-inputs FILE with real inputs (the control plane records the outputs as test vectors)"
	path, err := infer.FindLibrary(lib)
	if err != nil {
		return "nothing more if the model runs on synthetic inputs (not tried: " + err.Error() + "); else " + withSamples
	}
	rt, err := infer.NewRuntime(path, nil)
	if err != nil {
		return "nothing more if the model runs on synthetic inputs (not tried: " + err.Error() + "); else " + withSamples
	}
	defer rt.Close()
	sess, err := rt.Load(data, nil, nil)
	if err != nil {
		return "onnxruntime does not load it here: " + err.Error()
	}
	defer sess.Close()
	in, err := models.SyntheticInputs(ins)
	if err == nil {
		_, err = sess.Run(in)
	}
	if err != nil {
		return withSamples + "; the model fails on synthetic inputs: " + err.Error()
	}
	return "nothing more: it runs on synthetic inputs made from its schema, and push records test vectors from them; " +
		"--sample-inputs FILE with real inputs makes a stronger check, --reference-data FILE (CSV of training rows) enables drift monitoring"
}
